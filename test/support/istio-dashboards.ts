// The TCP panels and variables of Istio's standard Grafana dashboards, as facts to evaluate against
// kernmesh's metrics: the PromQL of every panel target and variable that reads istio_tcp_*, taken from
// github.com/istio/istio manifests/addons/dashboards/ at commit 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c.

export interface DashboardVariable {
  name: string;
  /** The PromQL inside Grafana's query_result(...), or the custom values. */
  query: string;
  /** Grafana's regex picking the value out of each result series. */
  regex?: string;
  /** The dashboard's default selection: a value, or 'all' of them. */
  current: string;
  custom?: boolean;
}

export interface DashboardPanel {
  title: string;
  expr: string;
}

export interface IstioDashboard {
  file: string;
  variables: DashboardVariable[];
  panels: DashboardPanel[];
}

export const ISTIO_DASHBOARDS_COMMIT = '86c9f01fd735fb01d8192f5bcaf0d424afb7f14c';

export const ISTIO_DASHBOARDS: IstioDashboard[] = [
  {
    file: 'istio-mesh-dashboard.gen.json',
    variables: [],
    panels: [
      {
        title: 'TCP Workloads',
        expr: 'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_received_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")',
      },
      {
        title: 'TCP Workloads',
        expr: 'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_sent_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")',
      },
    ],
  },
  {
    file: 'istio-service-dashboard.json',
    variables: [
      {
        name: 'service',
        query:
          'sum(istio_requests_total{}) by (destination_service) or sum(istio_tcp_sent_bytes_total{}) by (destination_service)',
        regex: '/.*destination_service="([^"]*).*/',
        current: 'details.default.svc.cluster.local',
      },
      { name: 'qrep', query: 'source,destination', current: 'destination', custom: true },
      {
        name: 'srccluster',
        query:
          'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) by (source_cluster) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}) by (source_cluster)',
        regex: '/.*cluster="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'srcns',
        query:
          'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) by (source_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}) by (source_workload_namespace)',
        regex: '/.*namespace="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'srcwl',
        query:
          'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service", source_workload_namespace=~"$srcns"}) by (source_workload) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service", source_workload_namespace=~"$srcns"}) by (source_workload)',
        regex: '/.*workload="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'dstcluster',
        query:
          'sum(istio_requests_total{reporter="destination", destination_service="$service"}) by (destination_cluster) or sum(istio_tcp_sent_bytes_total{reporter="destination", destination_service="$service"}) by (destination_cluster)',
        regex: '/.*cluster="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'dstns',
        query:
          'sum(istio_requests_total{reporter="destination", destination_service="$service"}) by (destination_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter="destination", destination_service="$service"}) by (destination_workload_namespace)',
        regex: '/.*namespace="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'dstwl',
        query:
          'sum(istio_requests_total{reporter="destination", destination_service="$service", destination_cluster=~"$dstcluster", destination_workload_namespace=~"$dstns"}) by (destination_workload) or sum(istio_tcp_sent_bytes_total{reporter="destination", destination_service="$service", destination_cluster=~"$dstcluster", destination_workload_namespace=~"$dstns"}) by (destination_workload)',
        regex: '/.*workload="([^"]*).*/',
        current: 'all',
      },
    ],
    panels: [
      {
        title: 'TCP Received Bytes',
        expr: 'sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))',
      },
      {
        title: 'TCP Sent Bytes',
        expr: 'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter=~"$qrep", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy!="mutual_tls", reporter=~"$qrep", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter="destination", connection_security_policy="mutual_tls", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter="destination", connection_security_policy!="mutual_tls", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter="destination", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy!="mutual_tls", reporter="destination", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
      },
    ],
  },
  {
    file: 'istio-workload-dashboard.json',
    variables: [
      {
        name: 'namespace',
        query:
          'sum(istio_requests_total) by (destination_workload_namespace) or sum(istio_tcp_sent_bytes_total) by (destination_workload_namespace)',
        regex: '/.*_namespace="([^"]*).*/',
        current: 'default',
      },
      {
        name: 'workload',
        query:
          '(sum(istio_requests_total{destination_workload_namespace=~"$namespace"}) by (destination_workload) or sum(istio_requests_total{source_workload_namespace=~"$namespace"}) by (source_workload)) or (sum(istio_tcp_sent_bytes_total{destination_workload_namespace=~"$namespace"}) by (destination_workload) or sum(istio_tcp_sent_bytes_total{source_workload_namespace=~"$namespace"}) by (source_workload))',
        regex: '/.*workload="([^"]*).*/',
        current: '',
      },
      { name: 'qrep', query: 'source,destination', current: 'destination', custom: true },
      {
        name: 'srcns',
        query:
          'sum(istio_requests_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace"}) by (source_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace"}) by (source_workload_namespace)',
        regex: '/.*namespace="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'srcwl',
        query:
          'sum(istio_requests_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace", source_workload_namespace=~"$srcns"}) by (source_workload) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace", source_workload_namespace=~"$srcns"}) by (source_workload)',
        regex: '/.*workload="([^"]*).*/',
        current: 'all',
      },
      {
        name: 'dstsvc',
        query:
          'sum(istio_requests_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service) or sum(istio_tcp_sent_bytes_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service)',
        regex: '/.*destination_service="([^"]*).*/',
        current: 'all',
      },
    ],
    panels: [
      {
        title: 'TCP Server Traffic',
        expr: 'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval])) + sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval]))',
      },
      {
        title: 'TCP Client Traffic',
        expr: 'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", source_workload_namespace=~"$namespace", source_workload=~"$workload"}[$__rate_interval])) + sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", source_workload_namespace=~"$namespace", source_workload=~"$workload"}[$__rate_interval]))',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy="mutual_tls", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Received from Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent to Incoming TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy!="mutual_tls", reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
      },
      {
        title: 'Bytes Sent on Outgoing TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{connection_security_policy="mutual_tls", reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
      },
      {
        title: 'Bytes Sent on Outgoing TCP Connection',
        expr: 'round(sum(irate(istio_tcp_received_bytes_total{connection_security_policy!="mutual_tls", reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
      },
      {
        title: 'Bytes Received from Outgoing TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
      },
      {
        title: 'Bytes Received from Outgoing TCP Connection',
        expr: 'round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
      },
    ],
  },
];
