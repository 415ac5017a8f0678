# kernmesh node agent image, run as a DaemonSet (deploy/kubernetes/, docs/kubernetes.md): root with
# CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only, the host's bpffs and cgroup v2 tree mounted, because it
# attaches programs to the pods' cgroups and pins its maps and links in the host's bpffs.
# test/dockerfile.test.ts runs an agent assembled from exactly what the runtime stage copies.
FROM node:20-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev libelf-dev zlib1g-dev linux-libc-dev make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libbpf1 libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kernmesh
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native/build/Release/kernmesh_native.node ./native/build/Release/
COPY --from=build /src/bpf/*.bpf.o ./bpf/
# kernmesh's own .proto declarations (Istio's workload API), loaded at run time
COPY --from=build /src/proto ./proto
COPY --from=build /src/package.json ./
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["run"]
