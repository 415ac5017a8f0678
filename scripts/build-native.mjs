// Builds the libbpf N-API addon with node-gyp against this Node's headers.
// On Debian's nodejs the headers live in /usr/include/node, which node-gyp finds through --nodedir
// instead of downloading a tarball (these machines reach no such host).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const args = [gyp, 'rebuild', '--directory', 'native'];
if (existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');
const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(r.status ?? 1);
