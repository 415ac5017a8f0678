// The routing maps as plain in-memory tables, for tests of the writer and the views that read what
// it wrote without a kernel (the kernel tests use the real maps).
import { ROUTE_MAPS, type MapHandle, type RouteMaps } from '../../src/dataplane/maps.js';

export function memoryMaps(): RouteMaps {
  const map = (name: string): MapHandle => {
    const data = new Map<string, Buffer>();
    return {
      name,
      keySize: 0,
      valueSize: 0,
      maxEntries: 100000,
      lookup: (k) => data.get(k.toString('hex')),
      update: (k, v) => void data.set(k.toString('hex'), Buffer.from(v)),
      delete: (k) => data.delete(k.toString('hex')),
      keys: () => [...data.keys()].map((k) => Buffer.from(k, 'hex')),
      entries: () => [...data].map(([k, v]) => [Buffer.from(k, 'hex'), v]),
    };
  };
  return Object.fromEntries(ROUTE_MAPS.map((n) => [n, map(n)])) as unknown as RouteMaps;
}
