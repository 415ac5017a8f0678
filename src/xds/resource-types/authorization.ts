// Istio's L4 authorization policies for node proxies (istio.security.Authorization), named
// `namespace/name`, always over Delta and wildcard beside istio.workload.Address, as ztunnel
// subscribes to them. Read and checked by translate/authorization.ts, enforced by src/authz.
import { obj, str } from '../read-json.js';
import { TYPE } from '../types.js';
import type { ResourceType } from './resource-type.js';

export const AUTHORIZATION: ResourceType = {
  typeUrl: TYPE.authorization,
  // istiod's short name for the type (pkg/model/xds.go)
  label: 'WADS',
  noun: 'authorization policy',
  plural: 'authorization policies',
  wildcard: true,
  deltaOnly: true,
  nameOf: (r) => {
    const o = obj(r);
    return `${str(o?.['namespace']) ?? ''}/${str(o?.['name']) ?? ''}`;
  },
};
