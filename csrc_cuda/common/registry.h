// The flat table from (direction, head-dim bucket, dtype) to compiled launchers. Its contents
// depend on what a build compiled, so build.py generates the definition (registry.cu) per build.
#pragma once

#include <cuda_runtime.h>

#include "../sm80/tile_config.h"
#include "params.h"

namespace fa {

using FwdLauncher = cudaError_t (*)(AttnParams const&, sm80::ArchRow, cudaStream_t);
using BwdLauncher = cudaError_t (*)(BwdParams const&, sm80::ArchRow, cudaStream_t);

struct KernelEntry {
  int head_dim;  // bucket
  int dtype;     // fa_dtype
  FwdLauncher fwd;  // exactly one of fwd, bwd is set
  BwdLauncher bwd;
};

extern const KernelEntry kKernels[];
extern const int kNumKernels;
extern const char kBuildInfo[];

}  // namespace fa
