// The file source reader: config dumps (JSON, YAML), resources files, ztunnel dumps, and errors
// that name the file and the line.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigFileError, parseConfigFile, readConfigFile } from '../src/xds/config-file.js';
import { TYPE, type XdsResource } from '../src/xds/types.js';
import { readAddresses } from '../src/xds/waypoints.js';
import { fixturePath } from './support/fixtures.js';

/** The decoded resources of a file, as the file source hands them on. */
function decoded(
  resources: { typeUrl: string; name: string; version: string; resource?: XdsResource['resource'] }[],
): XdsResource[] {
  return resources.flatMap((r) =>
    r.resource ? [{ typeUrl: r.typeUrl, name: r.name, version: r.version, resource: r.resource }] : [],
  );
}

/** Waypoints and notes of a file's workload API Addresses, through the one waypoint reader. */
function addressesOf(contents: { resources: Parameters<typeof decoded>[0] }) {
  return readAddresses(decoded(contents.resources).filter((r) => r.typeUrl === TYPE.address));
}

void describe('readConfigFile', () => {
  void it('reads the YAML listeners dump: 27 dynamic and 2 static listeners', async () => {
    const { resources } = await readConfigFile(fixturePath('sidecar-listeners.configdump.yaml'));
    assert.equal(resources.length, 29);
    assert.ok(resources.every((r) => r.typeUrl === TYPE.listener));
    const vo = resources.find((r) => r.name === 'virtualOutbound');
    // Its own active_state.version_info (line 3892), not the section's (2023-06-20T09:08:58Z/4).
    assert.equal(vo?.version, '2023-06-20T09:07:41Z/3');
    assert.equal(vo?.resource?.['@type'], TYPE.listener);
    // The two static listeners have no name: Envoy names them by address.
    assert.deepEqual(
      resources.slice(0, 2).map((r) => r.name),
      ['0.0.0.0_15090', '0.0.0.0_15021'],
    );
  });

  void it('reads every section of a full config dump and skips the ones kernmesh does not use', async () => {
    const { resources, notes } = await readConfigFile(fixturePath('waypoint-full.configdump.json'));
    const count = (t: string) => resources.filter((r) => r.typeUrl === t).length;
    assert.deepEqual(
      [count(TYPE.cluster), count(TYPE.endpoint), count(TYPE.listener), count(TYPE.route)],
      [3, 2, 2, 1],
    );
    assert.equal(notes.length, 3);
    const cla = resources.find((r) => r.typeUrl === TYPE.endpoint && r.name.startsWith('inbound-vip'));
    assert.equal(cla?.name, 'inbound-vip|8100|http|httpbin.default.svc.cluster.local');
    assert.equal(
      resources.find((r) => r.name === 'agent' && r.typeUrl === TYPE.cluster)?.lastUpdated,
      '2023-12-26T05:57:09.898Z',
    );
  });

  void it('names the file and the line of a YAML syntax error', () => {
    assert.throws(
      () => parseConfigFile('configs:\n  - "@type": x\n    key: [1, 2\n', 'dump.yaml'),
      (err: Error) =>
        err instanceof ConfigFileError && /^dump\.yaml: line \d+: invalid YAML/.test(err.message),
    );
  });

  void it('names the file and the line of a JSON syntax error', () => {
    assert.throws(
      () => parseConfigFile('{\n  "configs": [\n    {"a": 1,}\n  ]\n}\n', 'dump.json'),
      (err: Error) => err instanceof ConfigFileError && /^dump\.json: line 3: invalid JSON/.test(err.message),
    );
  });

  void it('keeps the cause of an unreadable file', async () => {
    await assert.rejects(readConfigFile('/nonexistent/kernmesh.json'), (err: Error) => {
      assert.ok(err instanceof ConfigFileError);
      assert.match(err.message, /^\/nonexistent\/kernmesh\.json: cannot read: ENOENT/);
      assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT');
      return true;
    });
  });

  void it('refuses a document that is none of the known layouts', () => {
    assert.throws(
      () => parseConfigFile('{"clusters": []}', 'x.json'),
      /^ConfigFileError: x\.json: not a config dump/,
    );
    assert.throws(
      () => parseConfigFile('{"resources": [{"name": "a"}]}', 'x.json'),
      /resources\[0\]: no "@type"/,
    );
  });

  void it('reads a resources file, Delta-style wrappers, and waypoints from workload API Addresses', () => {
    const text = JSON.stringify({
      version_info: 'v7',
      resources: [
        { '@type': 'type.googleapis.com/envoy.config.cluster.v3.Cluster', name: 'a', type: 'STATIC' },
        {
          name: 'b',
          version: 'v9',
          resource: {
            '@type': 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
            cluster_name: 'b',
          },
        },
        {
          '@type': 'type.googleapis.com/istio.workload.Address',
          service: {
            name: 'reviews',
            namespace: 'default',
            hostname: 'reviews.default.svc.cluster.local',
            addresses: [{ network: '', address: Buffer.from([127, 100, 0, 3]).toString('base64') }],
            ports: [{ service_port: 9080, target_port: 9080 }],
            waypoint: {
              address: { network: '', address: Buffer.from([127, 0, 0, 50]).toString('base64') },
              hbone_mtls_port: 15008,
            },
          },
        },
      ],
    });
    const contents = parseConfigFile(text, 'r.json');
    const { resources } = contents;
    const { waypoints } = addressesOf(contents);
    assert.deepEqual(
      resources.map((r) => [r.typeUrl, r.name, r.version]),
      [
        [TYPE.cluster, 'a', 'v7'],
        [TYPE.endpoint, 'b', 'v9'],
        [TYPE.address, 'default/reviews.default.svc.cluster.local', 'v7'],
      ],
    );
    assert.deepEqual(waypoints, [
      {
        namespace: 'default',
        hostname: 'reviews.default.svc.cluster.local',
        vips: ['127.100.0.3'],
        ports: [{ servicePort: 9080, targetPort: 9080 }],
        waypoint: { address: '127.0.0.50', port: 15008 },
      },
    ]);
  });

  void it('reads ztunnel’s dump: service waypoints, and notes for workload waypoints', async () => {
    const contents = await readConfigFile(fixturePath('ztunnel-wds.dump.json'));
    // 19 services and 27 workloads, each read as the workload API Address it was built from.
    assert.equal(contents.resources.length, 19 + 27);
    assert.ok(contents.resources.every((r) => r.typeUrl === TYPE.address && r.resource));
    const { waypoints, notes } = addressesOf(contents);
    assert.deepEqual(waypoints, []);
    assert.equal(notes.filter((n) => n.note.includes('has waypoint')).length, 6);
    const withWaypoint = parseConfigFile(
      JSON.stringify({
        workloads: {},
        services: {
          'default/web': {
            name: 'web',
            namespace: 'default',
            hostname: 'web.default.svc.cluster.local',
            vips: ['/127.100.0.2'],
            ports: { '80': 8080 },
            waypoint: { destination: '/127.0.0.50', port: 15008 },
          },
        },
      }),
      'z.json',
    );
    assert.deepEqual(addressesOf(withWaypoint).waypoints, [
      {
        namespace: 'default',
        hostname: 'web.default.svc.cluster.local',
        vips: ['127.100.0.2'],
        ports: [{ servicePort: 80, targetPort: 8080 }],
        waypoint: { address: '127.0.0.50', port: 15008 },
      },
    ]);
  });
});
