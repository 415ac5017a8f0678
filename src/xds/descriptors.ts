// The descriptors @bufbuild/protobuf works from, built at run time from the protos kernmesh already
// loads (protobufjs reflection over @grpc/grpc-js-xds's Envoy trees and proto/): one
// FileDescriptorProto per .proto file, the well-known types taken from @bufbuild/protobuf itself,
// plus kernmesh.internal.OpaqueAny, which carries an Any of a type no proto here declares.
import { create, createFileRegistry, fromJson, type DescFile, type FileRegistry } from '@bufbuild/protobuf';
import {
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  file_google_protobuf_any,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_wrappers,
  type DescriptorProtoJson,
  type FieldDescriptorProtoJson,
  type FileDescriptorProto,
  type FileDescriptorProtoJson,
} from '@bufbuild/protobuf/wkt';
import protobuf from 'protobufjs';
import { protoRoot } from './protos.js';

const WKT: Record<string, DescFile> = {
  'google/protobuf/any.proto': file_google_protobuf_any,
  'google/protobuf/descriptor.proto': file_google_protobuf_descriptor,
  'google/protobuf/duration.proto': file_google_protobuf_duration,
  'google/protobuf/empty.proto': file_google_protobuf_empty,
  'google/protobuf/field_mask.proto': file_google_protobuf_field_mask,
  'google/protobuf/struct.proto': file_google_protobuf_struct,
  'google/protobuf/timestamp.proto': file_google_protobuf_timestamp,
  'google/protobuf/wrappers.proto': file_google_protobuf_wrappers,
};

/** The well-known file a google.protobuf type lives in. */
function wktFile(fullName: string): string {
  const n = fullName.replace(/^\.google\.protobuf\./, '').split('.')[0] ?? '';
  if (['Struct', 'Value', 'ListValue', 'NullValue'].includes(n)) return 'google/protobuf/struct.proto';
  if (n.endsWith('Value')) return 'google/protobuf/wrappers.proto';
  const file = `google/protobuf/${n.replace(/[A-Z]/g, (c, i: number) => `${i ? '_' : ''}${c.toLowerCase()}`)}.proto`;
  return file in WKT ? file : 'google/protobuf/descriptor.proto';
}

const SCALAR: Record<string, number> = {
  double: 1,
  float: 2,
  int64: 3,
  uint64: 4,
  int32: 5,
  fixed64: 6,
  fixed32: 7,
  bool: 8,
  string: 9,
  bytes: 12,
  uint32: 13,
  sfixed32: 15,
  sfixed64: 16,
  sint32: 17,
  sint64: 18,
};

function fileOf(o: protobuf.ReflectionObject): string {
  if (o.fullName.startsWith('.google.protobuf.')) return wktFile(o.fullName);
  let x: protobuf.ReflectionObject | null = o;
  while (x && !x.filename) x = x.parent;
  return x?.filename ?? 'unknown.proto';
}

function lowerCamel(s: string): string {
  return s.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

function fieldJson(
  f: protobuf.Field,
  index: number,
  oneofs: string[],
  deps: Set<string>,
  here: string,
): FieldDescriptorProtoJson {
  const out: FieldDescriptorProtoJson = {
    name: f.name,
    number: f.id,
    label: f.repeated || f.map ? 'LABEL_REPEATED' : 'LABEL_OPTIONAL',
    jsonName: typeof f.options?.['json_name'] === 'string' ? f.options['json_name'] : lowerCamel(f.name),
  };
  void index;
  const rt = f.resolvedType;
  if (f.map) {
    out.type = 'TYPE_MESSAGE';
    out.typeName = `${f.parent!.fullName}.${lowerCamel(f.name).replace(/^./, (c) => c.toUpperCase())}Entry`;
  } else if (rt instanceof protobuf.Type || rt instanceof protobuf.Enum) {
    out.type = rt instanceof protobuf.Type ? 'TYPE_MESSAGE' : 'TYPE_ENUM';
    out.typeName = rt.fullName;
    const file = fileOf(rt);
    if (file !== here) deps.add(file);
  } else {
    const n = SCALAR[f.type];
    if (n === undefined) throw new Error(`${f.fullName}: scalar type ${f.type}`);
    out.type = Object.keys(SCALAR).includes(f.type)
      ? (`TYPE_${f.type.toUpperCase()}` as FieldDescriptorProtoJson['type'])
      : undefined;
  }
  if (f.partOf) {
    out.oneofIndex = oneofs.indexOf(f.partOf.name);
    if (f.options?.['proto3_optional'] === true) out.proto3Optional = true;
  }
  return out;
}

function mapEntry(f: protobuf.MapField, deps: Set<string>, here: string): DescriptorProtoJson {
  const value: FieldDescriptorProtoJson = {
    name: 'value',
    number: 2,
    label: 'LABEL_OPTIONAL',
    jsonName: 'value',
  };
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Type || rt instanceof protobuf.Enum) {
    value.type = rt instanceof protobuf.Type ? 'TYPE_MESSAGE' : 'TYPE_ENUM';
    value.typeName = rt.fullName;
    const file = fileOf(rt);
    if (file !== here) deps.add(file);
  } else {
    value.type = `TYPE_${f.type.toUpperCase()}` as FieldDescriptorProtoJson['type'];
  }
  return {
    name: `${lowerCamel(f.name).replace(/^./, (c) => c.toUpperCase())}Entry`,
    field: [
      {
        name: 'key',
        number: 1,
        label: 'LABEL_OPTIONAL',
        jsonName: 'key',
        type: `TYPE_${f.keyType.toUpperCase()}` as FieldDescriptorProtoJson['type'],
      },
      value,
    ],
    options: { mapEntry: true },
  };
}

function enumJson(e: protobuf.Enum) {
  return { name: e.name, value: Object.entries(e.values).map(([name, number]) => ({ name, number })) };
}

function messageJson(t: protobuf.Type, deps: Set<string>, here: string): DescriptorProtoJson {
  const oneofs = t.oneofsArray.map((o) => o.name);
  return {
    name: t.name,
    field: t.fieldsArray.map((f, i) => fieldJson(f, i, oneofs, deps, here)),
    nestedType: [
      ...t.nestedArray
        .filter((n): n is protobuf.Type => n instanceof protobuf.Type)
        .map((n) => messageJson(n, deps, here)),
      ...t.fieldsArray
        .filter((f) => f.map)
        .map((f) => mapEntry(f as unknown as protobuf.MapField, deps, here)),
    ],
    enumType: t.nestedArray.filter((n): n is protobuf.Enum => n instanceof protobuf.Enum).map(enumJson),
    oneofDecl: oneofs.map((name) => ({ name })),
  };
}

const OPAQUE_PACKAGE = 'kernmesh.internal';

/** The stand-in for an Any whose type no proto here declares: its type URL and bytes, kept as they came. */
export const OPAQUE_ANY = `${OPAQUE_PACKAGE}.OpaqueAny`;

let registry: FileRegistry | undefined;

/** Every message kernmesh knows, as a @bufbuild/protobuf registry (built once). */
export function bufbuildRegistry(): FileRegistry {
  if (registry) return registry;
  const root = protoRoot();
  const files = new Map<
    string,
    { pkg: string; messages: DescriptorProtoJson[]; enums: ReturnType<typeof enumJson>[]; deps: Set<string> }
  >();
  const walk = (ns: protobuf.NamespaceBase): void => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Type || o instanceof protobuf.Enum) {
        if (o.fullName.startsWith('.google.protobuf.')) continue;
        const here = fileOf(o);
        const pkg = ns.fullName.slice(1);
        const f = files.get(here) ?? { pkg, messages: [], enums: [], deps: new Set<string>() };
        files.set(here, f);
        if (o instanceof protobuf.Type) f.messages.push(messageJson(o, f.deps, here));
        else f.enums.push(enumJson(o));
      } else if (o instanceof protobuf.Namespace && !(o instanceof protobuf.Service)) {
        walk(o);
      }
    }
  };
  walk(root);
  const protos = new Map<string, FileDescriptorProto>();
  for (const [name, f] of files) {
    const json: FileDescriptorProtoJson = {
      name,
      package: f.pkg,
      syntax: 'proto3',
      dependency: [...f.deps].sort(),
      messageType: f.messages,
      enumType: f.enums,
    };
    protos.set(name, fromJson(FileDescriptorProtoSchema, json));
  }
  // A FileDescriptorSet is added in order: every file after the files it imports.
  const ordered: FileDescriptorProto[] = Object.values(WKT).map((f) => f.proto);
  const done = new Set(Object.keys(WKT));
  const visit = (name: string): void => {
    if (done.has(name)) return;
    done.add(name);
    const p = protos.get(name);
    if (!p) throw new Error(`no descriptor for ${name}`);
    for (const d of p.dependency) visit(d);
    ordered.push(p);
  };
  for (const name of [...protos.keys()].sort()) visit(name);
  ordered.push(
    fromJson(FileDescriptorProtoSchema, {
      name: 'kernmesh/internal/opaque.proto',
      package: OPAQUE_PACKAGE,
      syntax: 'proto3',
      messageType: [
        {
          name: 'OpaqueAny',
          field: [
            {
              name: 'type_url',
              number: 1,
              label: 'LABEL_OPTIONAL',
              type: 'TYPE_STRING',
              jsonName: 'typeUrl',
            },
            { name: 'value', number: 2, label: 'LABEL_OPTIONAL', type: 'TYPE_BYTES', jsonName: 'value' },
          ],
        },
      ],
    }),
  );
  registry = createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
  return registry;
}
