// LDS: envoy.config.listener.v3.Listener. Wildcard; the HTTP connection managers in it name the
// RouteConfigurations (RDS) it needs.
import { num, obj, str } from '../read-json.js';
import { TYPE, type JsonObject, type JsonValue } from '../types.js';
import type { ResourceType } from './resource-type.js';

/** A listener's name; bootstrap listeners may be unnamed, and Envoy then names them by address. */
export function listenerName(l: JsonObject): string {
  const name = str(l['name']);
  if (name) return name;
  const sa = obj(obj(l['address'])?.['socket_address']);
  if (!sa) return '';
  return `${str(sa['address']) ?? ''}_${num(sa['port_value']) ?? 0}`;
}

/** Route configuration names referenced through RDS anywhere in a listener (HCMs in filter chains). */
export function routeNames(listener: JsonObject): string[] {
  const names = new Set<string>();
  const walk = (v: JsonValue): void => {
    if (Array.isArray(v)) for (const x of v) walk(x);
    else if (v && typeof v === 'object') {
      const route = str(obj(v['rds'])?.['route_config_name']);
      if (route) names.add(route);
      for (const x of Object.values(v)) walk(x);
    }
  };
  walk(listener);
  return [...names].sort();
}

export const LISTENER: ResourceType = {
  typeUrl: TYPE.listener,
  label: 'LDS',
  noun: 'listener',
  plural: 'listeners',
  wildcard: true,
  deltaOnly: false,
  v2TypeUrl: 'type.googleapis.com/envoy.api.v2.Listener',
  nameOf: listenerName,
  dependency: { typeUrl: TYPE.route, namesOf: routeNames, warms: false },
  configDump: {
    position: 3,
    section: 'ListenersConfigDump',
    key: 'listener',
    dynamicList: 'dynamic_listeners',
    lists: ['static_listeners', 'dynamic_listeners'],
    nestedState: true,
    sectionVersion: true,
    onRequestOnly: false,
    dynamicElement: 'DynamicListener',
    staticElement: 'StaticListener',
  },
};
