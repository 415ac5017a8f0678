// translate/'s side of istio.security.Authorization: each policy is read on receipt by
// src/authz/policy.ts, so a policy kernmesh cannot enforce as sent is NACKed with every fault and its
// path while the others apply. What a refused policy means for the workloads it applies to (it
// denies, never allows) is decided by src/authz/compile.ts.
import { readAuthorization, type PolicyReading } from '../authz/policy.js';
import { TYPE } from '../xds/types.js';
import type { Analyser } from './analysis.js';

export const AUTHORIZATION_ANALYSER: Analyser<PolicyReading> = {
  typeUrl: TYPE.authorization,
  analyse: (resource, res) => {
    const reading = readAuthorization(resource, res.name);
    for (const f of reading.faults ?? []) res.refuse(f.path, f.reason);
    return reading;
  },
};
