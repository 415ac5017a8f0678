/* Structs shared between the BPF programs and user space (src/dataplane, src/telemetry).
 * Every struct here has a TypeScript codec whose size and offsets a test checks against BTF.
 * Fixed-width types only, explicit padding, so the layout is the same on both sides. */
#ifndef KERNMESH_H
#define KERNMESH_H

#include <linux/types.h>

/* ---- routing (connect4/6, getpeername, waypoints) ---- */

/* ---- acceleration and telemetry ---- */

#endif /* KERNMESH_H */
