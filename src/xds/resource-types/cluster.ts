// CDS: envoy.config.cluster.v3.Cluster. Wildcard; an EDS cluster names the ClusterLoadAssignment it
// waits for, and edsServiceName() is the one place that name is computed.
import { obj, str } from '../read-json.js';
import { TYPE, type JsonObject } from '../types.js';
import type { ResourceType } from './resource-type.js';

/** The ClusterLoadAssignment an EDS cluster uses: eds_cluster_config.service_name, else its own name. */
export function edsServiceName(cluster: JsonObject): string | undefined {
  if (cluster['type'] !== 'EDS') return undefined;
  return str(obj(cluster['eds_cluster_config'])?.['service_name']) ?? str(cluster['name']);
}

export const CLUSTER: ResourceType = {
  typeUrl: TYPE.cluster,
  label: 'CDS',
  noun: 'cluster',
  plural: 'clusters',
  wildcard: true,
  deltaOnly: false,
  v2TypeUrl: 'type.googleapis.com/envoy.api.v2.Cluster',
  nameOf: (r) => str(r['name']) ?? '',
  dependency: {
    typeUrl: TYPE.endpoint,
    namesOf: (r) => {
      const eds = edsServiceName(r);
      return eds ? [eds] : [];
    },
    warms: true,
  },
  configDump: {
    position: 1,
    section: 'ClustersConfigDump',
    key: 'cluster',
    dynamicList: 'dynamic_active_clusters',
    lists: ['static_clusters', 'dynamic_active_clusters', 'dynamic_warming_clusters'],
    nestedState: false,
    sectionVersion: true,
    onRequestOnly: false,
    dynamicElement: 'DynamicCluster',
    staticElement: 'StaticCluster',
  },
};
