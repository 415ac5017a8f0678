// Istio's workload API: istio.workload.Address (a Service or a Workload), always over Delta and
// wildcard, as ztunnel subscribes to it. A Service is named `namespace/hostname`, a Workload by uid.
import { obj, str } from '../read-json.js';
import { TYPE } from '../types.js';
import type { ResourceType } from './resource-type.js';

export const ADDRESS: ResourceType = {
  typeUrl: TYPE.address,
  label: 'WDS',
  noun: 'address',
  plural: 'addresses',
  wildcard: true,
  deltaOnly: true,
  nameOf: (r) => {
    const svc = obj(r['service']);
    if (svc) return `${str(svc['namespace']) ?? ''}/${str(svc['hostname']) ?? ''}`;
    return str(obj(r['workload'])?.['uid']) ?? '';
  },
};
