// The translate stage's public surface: validate() for the xDS client's NACKs, translate() for the agent.
export { translate } from './translate.js';
export { concernsOneVirtualHost, validate, validateAgainst, type AcceptedResources } from './validate.js';
export type {
  ClusterView,
  DnsQuery,
  FrontendView,
  NotEnforced,
  OutboundPolicy,
  ResourceUse,
  StatusNote,
  TranslateInput,
  TranslateResult,
} from './types.js';
