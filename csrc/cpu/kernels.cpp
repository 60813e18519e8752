// CPU kernels of the mtlguard ops (TORCH_LIBRARY_IMPL(mtlguard, CPU, ...)), one file per op, compiled as ONE
// translation unit: parsing the torch headers dominates the compile time (~1 min per unit on 2 cores), so a
// unity build keeps CI builds short.
#include "apply_delta_kernel.h"
#include "balanced_sign_kernel.h"
#include "embed_concat_kernel.h"
#include "projection_kernel.h"
