// CUDA implementations behind moe/permute.h (arguments already checked by the dispatchers).
#pragma once

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

}  // namespace sy::cuda
