// EDS: envoy.config.endpoint.v3.ClusterLoadAssignment, named by cluster_name and subscribed by the
// names CDS asks for (cluster.ts).
import { str } from '../read-json.js';
import { TYPE } from '../types.js';
import type { ResourceType } from './resource-type.js';

export const ENDPOINT: ResourceType = {
  typeUrl: TYPE.endpoint,
  label: 'EDS',
  noun: 'endpoint',
  plural: 'endpoints',
  wildcard: false,
  deltaOnly: false,
  v2TypeUrl: 'type.googleapis.com/envoy.api.v2.ClusterLoadAssignment',
  nameOf: (r) => str(r['cluster_name']) ?? '',
  configDump: {
    position: 2,
    section: 'EndpointsConfigDump',
    key: 'endpoint_config',
    dynamicList: 'dynamic_endpoint_configs',
    lists: ['static_endpoint_configs', 'dynamic_endpoint_configs'],
    nestedState: false,
    sectionVersion: false,
    onRequestOnly: true,
    dynamicElement: 'DynamicEndpointConfig',
    staticElement: 'StaticEndpointConfig',
  },
};
