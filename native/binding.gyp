{
  "targets": [
    {
      "target_name": "kernmesh_native",
      "sources": [
        "src/addon.cc",
        "src/btf.cc",
        "src/errors.cc",
        "src/log.cc",
        "src/object.cc",
        "src/map.cc",
        "src/program.cc",
        "src/ringbuf.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++1y", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
