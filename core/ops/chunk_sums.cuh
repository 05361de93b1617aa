// Deterministic sums of per-chunk partial results, shared by the kernels that reduce over rows
// without atomics (RMSNorm's dweight, the router's weight gradient): each writes one partial row
// per chunk of rows, and add_chunk_sums adds the rows in a fixed order.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sy::cuda {

// out[i] (+)= the sum over chunks of partial[chunk * count + i] for i < count: stored, or added
// to out with `accumulate` (out not read otherwise). A block takes 32 consecutive i, and its 8
// lanes of each i add interleaved chunks (lane l: chunks l, l + 8, ...), 8 loads in flight at a
// time; the lanes' sums then meet in lane order. The same order on every run, so the same bits.
void add_chunk_sums(const float* partial, int chunks, std::int64_t count, float* out, bool accumulate,
                    cudaStream_t stream);

}  // namespace sy::cuda
