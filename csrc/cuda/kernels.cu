// CUDA kernels of the mtlguard ops (TORCH_LIBRARY_IMPL(mtlguard, CUDA, ...)), one file per op, compiled as ONE
// nvcc translation unit: nvcc parses the torch headers three times per unit (cudafe++, cicc, host compiler),
// ~2-5 min per unit on 2 cores, so a unity build keeps CI builds short.
#include "apply_delta_kernel.cuh"
#include "balanced_sign_kernel.cuh"
#include "embed_concat_kernel.cuh"
#include "projection_kernel.cuh"
