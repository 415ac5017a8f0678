// RDS: envoy.config.route.v3.RouteConfiguration, subscribed by the names LDS asks for (listener.ts).
import { str } from '../read-json.js';
import { TYPE } from '../types.js';
import type { ResourceType } from './resource-type.js';

export const ROUTE: ResourceType = {
  typeUrl: TYPE.route,
  label: 'RDS',
  noun: 'route',
  plural: 'routes',
  wildcard: false,
  deltaOnly: false,
  v2TypeUrl: 'type.googleapis.com/envoy.api.v2.RouteConfiguration',
  nameOf: (r) => str(r['name']) ?? '',
  configDump: {
    position: 4,
    section: 'RoutesConfigDump',
    key: 'route_config',
    dynamicList: 'dynamic_route_configs',
    lists: ['static_route_configs', 'dynamic_route_configs'],
    nestedState: false,
    sectionVersion: false,
    onRequestOnly: false,
    dynamicElement: 'DynamicRouteConfig',
    staticElement: 'StaticRouteConfig',
  },
};
