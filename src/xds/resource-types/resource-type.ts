// What the protocol, the file reader, the admin endpoint and the metrics need to know about one xDS
// resource type. Each type is one small object in its own file; everything that handles "every
// type" iterates RESOURCE_TYPES (index.ts) instead of switching on a type URL.
import type { JsonObject } from '../types.js';

/** Where a type's resources sit in an Envoy admin config_dump (envoy.admin.v3.*ConfigDump). */
export interface ConfigDumpSection {
  /** Where Envoy writes the section among the others (clusters 1, endpoints 2, listeners 3, routes 4). */
  position: number;
  /** The section's message, e.g. `ClustersConfigDump`. */
  section: string;
  /** The key of the resource inside each entry (`cluster`, `listener`, `route_config`...). */
  key: string;
  /** The list istioctl reads and the admin endpoint writes, e.g. `dynamic_active_clusters`. */
  dynamicList: string;
  /** Every list a dump may hold resources in, in the order they are read (static first). */
  lists: string[];
  /** Entries nest the resource in `active_state`/`warming_state` (listeners). */
  nestedState: boolean;
  /** The section carries a `version_info` of its own. */
  sectionVersion: boolean;
  /** Written only with `?include_eds` (endpoints), as Envoy does. */
  onRequestOnly: boolean;
  /** The message type of one element of `dynamicList`, for `?resource=` dumps. */
  dynamicElement: string;
  /** The message type of one element of the static list. */
  staticElement: string;
}

/** Names one type makes us subscribe to in another: CDS → EDS names, LDS → RDS names. */
export interface Dependency {
  typeUrl: string;
  /** The names of the other type this resource needs (none for e.g. a STATIC cluster). */
  namesOf(resource: JsonObject, name: string): string[];
  /**
   * A resource waits (warms) until every name it needs has arrived or is known not to exist, as
   * Envoy warms an EDS cluster; until then it is left out of the snapshot handed on.
   */
  warms: boolean;
}

export interface ResourceType {
  readonly typeUrl: string;
  /** The discovery service's initials, as istioctl and the metrics say it: CDS, EDS, LDS, RDS, WDS. */
  readonly label: string;
  /** One resource in the operator's words ("cluster"), and many ("clusters"). */
  readonly noun: string;
  readonly plural: string;
  /** Subscribed without names (every resource of the type), as CDS and LDS are. */
  readonly wildcard: boolean;
  /** Always carried over Delta, even when the agent speaks SotW (Istio's workload API). */
  readonly deltaOnly: boolean;
  /** The type URL of the same resource in Envoy's v2 API, refused on sight. */
  readonly v2TypeUrl?: string;
  /** The name of a decoded resource ('' when it has none). */
  nameOf(resource: JsonObject): string;
  readonly dependency?: Dependency;
  readonly configDump?: ConfigDumpSection;
}
