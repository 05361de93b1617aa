// CUDA implementations behind moe/permute.h (arguments already checked by the dispatchers).
#pragma once

#include <cstdint>

#include "core/stream.h"
#include "core/tensor.h"

namespace sy::cuda {

void moe_expert_offsets(const Tensor& counts, std::int64_t capacity, const Tensor& offsets, StreamRef stream);
void moe_scatter_rows(const Tensor& x, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                      const Tensor& send, StreamRef stream);
void moe_gather_rows_sum(const Tensor& rows, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                         const Tensor& dx, StreamRef stream);
void moe_combine(const Tensor& y, const Tensor& expert, const Tensor& slot, const Tensor& offsets, const Tensor& gate,
                 const Tensor& out, StreamRef stream);
void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& expert, const Tensor& slot,
                          const Tensor& offsets, const Tensor& gate, const Tensor& dy, const Tensor& dgate,
                          StreamRef stream);
// counts: [P, L] i32 on the device, or null for `uniform_rows` rows in every block.
void moe_regroup(const Tensor& in, int peers, int locals, const std::int32_t* counts, std::int64_t uniform_rows,
                 const Tensor& out, bool to_expert_major, StreamRef stream);

}  // namespace sy::cuda
