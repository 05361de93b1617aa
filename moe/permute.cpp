// MoE row movements: argument checks, dispatch, and the CPU reference of each.
#include "moe/permute.h"

#include <type_traits>
#include <vector>

#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"
#include "core/storage.h"
#include "moe/permute_cuda.h"

namespace sy {
namespace {

// Shared checks of the choice tensors: expert and slot [N, k] i32, offsets [E + 1] i32.
void check_choices(const char* op, const Tensor& expert, const Tensor& slot, const Tensor& offsets) {
  check_contiguous(op, "expert", expert);
  check_dtype(op, "expert", expert, DType::i32);
  SY_CHECK(expert.dim() == 2) << op << ": expert must be [N, k], got " << expert.describe();
  check_shape(op, "slot", slot, expert.shape());
  check_dtype(op, "slot", slot, DType::i32);
  check_contiguous(op, "offsets", offsets);
  check_dtype(op, "offsets", offsets, DType::i32);
  SY_CHECK(offsets.dim() == 1 && offsets.size(0) >= 2) << op << ": offsets must be [E + 1], got " << offsets.describe();
}

void check_rows(const char* op, const char* arg, const Tensor& t, std::int64_t width, DType dtype) {
  check_contiguous(op, arg, t);
  SY_CHECK(t.dim() == 2 && t.size(1) == width) << op << ": " << arg << " must be [rows, " << width << "], got "
                                               << t.describe();
  check_dtype(op, arg, t, dtype);
}

// The checks every token <-> row movement shares: the choices, a [N, d] float token tensor that
// matches them, and a [rows, d] buffer of the same dtype.
void check_movement(const char* op, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                    const char* tokens_name, const Tensor& tokens, const char* rows_name, const Tensor& rows) {
  check_choices(op, expert, slot, offsets);
  check_rows(op, tokens_name, tokens, tokens.dim() == 2 ? tokens.size(1) : -1, tokens.dtype());
  check_float(op, tokens_name, tokens);
  SY_CHECK(expert.size(0) == tokens.size(0))
      << op << ": expert has " << expert.size(0) << " tokens, " << tokens_name << " has " << tokens.size(0);
  check_rows(op, rows_name, rows, tokens.size(1), tokens.dtype());
}

// Row of choice (n, j) in the expert-ordered buffer, or -1 if dropped.
struct ChoiceRows {
  const std::int32_t* expert;
  const std::int32_t* slot;
  const std::int32_t* offsets;
  std::int64_t experts;
  std::int64_t row(std::int64_t choice) const {
    const std::int32_t s = slot[choice];
    if (s < 0) return -1;
    const std::int32_t e = expert[choice];
    SY_CHECK(e >= 0 && e < experts) << "moe: choice " << choice << " names expert " << e << ", outside [0, " << experts
                                    << ")";
    return std::int64_t(offsets[e]) + s;
  }
};

ChoiceRows choice_rows(const Tensor& expert, const Tensor& slot, const Tensor& offsets) {
  return {expert.ptr<std::int32_t>(), slot.ptr<std::int32_t>(), offsets.ptr<std::int32_t>(), offsets.size(0) - 1};
}

template <class T>
void scatter_cpu(const Tensor& x, const ChoiceRows& rows, std::int64_t k, const Tensor& send) {
  const std::int64_t n_tokens = x.size(0), d = x.size(1);
  const T* xp = x.ptr<T>();
  T* sp = send.ptr<T>();
  for (std::int64_t c = 0; c < n_tokens * k; ++c) {
    const std::int64_t row = rows.row(c);
    if (row < 0) continue;
    SY_CHECK(row < send.size(0)) << "moe_scatter_rows: row " << row << " is past the send buffer's " << send.size(0);
    for (std::int64_t i = 0; i < d; ++i) sp[row * d + i] = xp[(c / k) * d + i];
  }
}

template <class T>
void gather_sum_cpu(const Tensor& rows_t, const ChoiceRows& rows, std::int64_t k, const Tensor& dx) {
  const std::int64_t n_tokens = dx.size(0), d = dx.size(1);
  const T* rp = rows_t.ptr<T>();
  T* dp = dx.ptr<T>();
  std::vector<double> acc(static_cast<std::size_t>(d));
  for (std::int64_t n = 0; n < n_tokens; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = rows.row(n * k + j);
      if (row < 0) continue;
      for (std::int64_t i = 0; i < d; ++i) acc[std::size_t(i)] += to_double(rp[row * d + i]);
    }
    for (std::int64_t i = 0; i < d; ++i) dp[n * d + i] = from_double<T>(acc[std::size_t(i)]);
  }
}

// Gates are f32, or f64 in the CPU reference's f64 runs (gradient checks).
DType gate_dtype(const Tensor& rows) { return rows.dtype() == DType::f64 ? DType::f64 : DType::f32; }

template <class G>
double gate_value(const Tensor& gate, std::int64_t c) {
  return double(gate.ptr<G>()[c]);
}
double gate_at(const Tensor& gate, std::int64_t c) {
  return gate.dtype() == DType::f64 ? gate_value<double>(gate, c) : gate_value<float>(gate, c);
}

template <class T>
void combine_cpu(const Tensor& y, const ChoiceRows& rows, std::int64_t k, const Tensor& gate, const Tensor& out) {
  const std::int64_t n_tokens = out.size(0), d = out.size(1);
  const T* yp = y.ptr<T>();
  T* op = out.ptr<T>();
  std::vector<double> acc(static_cast<std::size_t>(d));
  for (std::int64_t n = 0; n < n_tokens; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t row = rows.row(n * k + j);
      if (row < 0) continue;
      const double g = gate_at(gate, n * k + j);
      for (std::int64_t i = 0; i < d; ++i) acc[std::size_t(i)] += g * to_double(yp[row * d + i]);
    }
    for (std::int64_t i = 0; i < d; ++i) op[n * d + i] = from_double<T>(acc[std::size_t(i)]);
  }
}

template <class T>
void combine_backward_cpu(const Tensor& dout, const Tensor& y, const ChoiceRows& rows, std::int64_t k,
                          const Tensor& gate, const Tensor& dy, const Tensor& dgate) {
  const std::int64_t n_tokens = dout.size(0), d = dout.size(1);
  const T* dop = dout.ptr<T>();
  const T* yp = y.ptr<T>();
  T* dyp = dy.ptr<T>();
  auto set_dgate = [&](std::int64_t c, double v) {
    if (dgate.dtype() == DType::f64) {
      dgate.ptr<double>()[c] = v;
    } else {
      dgate.ptr<float>()[c] = float(v);
    }
  };
  for (std::int64_t c = 0; c < n_tokens * k; ++c) {
    const std::int64_t row = rows.row(c), n = c / k;
    if (row < 0) {
      set_dgate(c, 0.0);
      continue;
    }
    const double g = gate_at(gate, c);
    double dot = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      dot += to_double(dop[n * d + i]) * to_double(yp[row * d + i]);
      dyp[row * d + i] = from_double<T>(g * to_double(dop[n * d + i]));
    }
    set_dgate(c, dot);
  }
}

// Visits the P x L blocks in both orders: fn(source-major start, expert-major start, rows).
template <class Fn>
void for_each_block(const RegroupBlocks& blocks, Fn&& fn) {
  const std::int64_t peers = blocks.peers, locals = blocks.locals;
  const std::int32_t* cp = blocks.counts.defined() ? blocks.counts.ptr<std::int32_t>() : nullptr;
  auto count = [&](std::int64_t b) { return cp ? std::int64_t(cp[b]) : blocks.uniform_rows; };
  std::vector<std::int64_t> expert_major_start(std::size_t(peers * locals));
  std::int64_t row = 0;
  for (std::int64_t l = 0; l < locals; ++l)
    for (std::int64_t p = 0; p < peers; ++p) {
      expert_major_start[std::size_t(p * locals + l)] = row;
      row += count(p * locals + l);
    }
  row = 0;
  for (std::int64_t b = 0; b < peers * locals; ++b) {
    fn(row, expert_major_start[std::size_t(b)], count(b));
    row += count(b);
  }
}

}  // namespace

void moe_expert_offsets(const Tensor& counts, std::int64_t capacity, const Tensor& offsets, StreamRef stream) {
  const char* op = "moe_expert_offsets";
  check_contiguous(op, "counts", counts);
  check_dtype(op, "counts", counts, DType::i32);
  check_shape(op, "offsets", offsets, {counts.numel() + 1});
  check_dtype(op, "offsets", offsets, DType::i32);
  check_same_device(op, {&counts, &offsets});
  SY_CHECK(capacity >= 0) << op << ": capacity must be >= 0, got " << capacity;
  if (counts.is_cuda()) {
    SY_ON_CUDA(cuda::moe_expert_offsets(counts, capacity, offsets, stream));
    return;
  }
  const std::int32_t* cp = counts.ptr<std::int32_t>();
  std::int32_t* op_ = offsets.ptr<std::int32_t>();
  std::int64_t total = 0;
  for (std::int64_t e = 0; e <= counts.numel(); ++e) {
    op_[e] = std::int32_t(total);
    if (e < counts.numel()) total += capacity > 0 ? capacity : cp[e];
  }
}

void moe_scatter_rows(const Tensor& x, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                      const Tensor& send, StreamRef stream) {
  const char* op = "moe_scatter_rows";
  check_movement(op, expert, slot, offsets, "x", x, "send", send);
  check_same_device(op, {&x, &expert, &slot, &offsets, &send});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::moe_scatter_rows(x, expert, slot, offsets, send, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) {
    scatter_cpu<std::remove_pointer_t<decltype(type)>>(x, choice_rows(expert, slot, offsets), expert.size(1), send);
  });
}

void moe_gather_rows_sum(const Tensor& rows, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                         const Tensor& dx, StreamRef stream) {
  const char* op = "moe_gather_rows_sum";
  check_movement(op, expert, slot, offsets, "dx", dx, "rows", rows);
  check_same_device(op, {&rows, &expert, &slot, &offsets, &dx});
  if (dx.is_cuda()) {
    SY_ON_CUDA(cuda::moe_gather_rows_sum(rows, expert, slot, offsets, dx, stream));
    return;
  }
  cpu::dispatch_float(dx, [&](auto* type) {
    gather_sum_cpu<std::remove_pointer_t<decltype(type)>>(rows, choice_rows(expert, slot, offsets), expert.size(1), dx);
  });
}

void moe_combine(const Tensor& y, const Tensor& expert, const Tensor& slot, const Tensor& offsets, const Tensor& gate,
                 const Tensor& out, StreamRef stream) {
  const char* op = "moe_combine";
  check_movement(op, expert, slot, offsets, "out", out, "y", y);
  check_shape(op, "gate", gate, expert.shape());
  check_dtype(op, "gate", gate, gate_dtype(out));
  check_same_device(op, {&y, &expert, &slot, &offsets, &gate, &out});
  if (out.is_cuda()) {
    SY_ON_CUDA(cuda::moe_combine(y, expert, slot, offsets, gate, out, stream));
    return;
  }
  cpu::dispatch_float(out, [&](auto* type) {
    combine_cpu<std::remove_pointer_t<decltype(type)>>(y, choice_rows(expert, slot, offsets), expert.size(1), gate, out);
  });
}

void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& expert, const Tensor& slot,
                          const Tensor& offsets, const Tensor& gate, const Tensor& dy, const Tensor& dgate,
                          StreamRef stream) {
  const char* op = "moe_combine_backward";
  check_movement(op, expert, slot, offsets, "dout", dout, "y", y);
  check_rows(op, "dy", dy, dout.size(1), dout.dtype());
  SY_CHECK(dy.size(0) == y.size(0)) << op << ": dy has " << dy.size(0) << " rows, y has " << y.size(0);
  check_shape(op, "gate", gate, expert.shape());
  check_dtype(op, "gate", gate, gate_dtype(dout));
  check_shape(op, "dgate", dgate, expert.shape());
  check_dtype(op, "dgate", dgate, gate_dtype(dout));
  check_same_device(op, {&dout, &y, &expert, &slot, &offsets, &gate, &dy, &dgate});
  // Rows no choice owns (capacity padding) carry no gradient.
  fill_bytes(dy, 0, stream);
  if (dout.is_cuda()) {
    SY_ON_CUDA(cuda::moe_combine_backward(dout, y, expert, slot, offsets, gate, dy, dgate, stream));
    return;
  }
  cpu::dispatch_float(dout, [&](auto* type) {
    combine_backward_cpu<std::remove_pointer_t<decltype(type)>>(dout, y, choice_rows(expert, slot, offsets),
                                                                expert.size(1), gate, dy, dgate);
  });
}

RegroupBlocks RegroupBlocks::of(const Tensor& counts) {
  SY_CHECK(counts.dim() == 2) << "moe_regroup: counts must be [P, L], got " << counts.describe();
  return {int(counts.size(0)), int(counts.size(1)), counts, 0};
}

void moe_regroup(const Tensor& in, const RegroupBlocks& blocks, const Tensor& out, bool to_expert_major,
                 StreamRef stream) {
  const char* op = "moe_regroup";
  check_rows(op, "in", in, in.dim() == 2 ? in.size(1) : -1, in.dtype());
  check_rows(op, "out", out, in.size(1), in.dtype());
  SY_CHECK(blocks.peers >= 0 && blocks.locals >= 0 && blocks.uniform_rows >= 0)
      << op << ": " << blocks.peers << " x " << blocks.locals << " blocks of " << blocks.uniform_rows << " rows";
  if (blocks.counts.defined()) {
    check_contiguous(op, "counts", blocks.counts);
    check_dtype(op, "counts", blocks.counts, DType::i32);
    check_shape(op, "counts", blocks.counts, {blocks.peers, blocks.locals});
    check_same_device(op, {&in, &blocks.counts, &out});
  } else {
    check_same_device(op, {&in, &out});
  }
  if (in.is_cuda()) {
    const std::int32_t* counts = blocks.counts.defined() ? blocks.counts.ptr<std::int32_t>() : nullptr;
    SY_ON_CUDA(cuda::moe_regroup(in, blocks.peers, blocks.locals, counts, blocks.uniform_rows, out, to_expert_major,
                                 stream));
    return;
  }
  const std::size_t row_bytes = std::size_t(in.size(1)) * dtype_size(in.dtype());
  const char* src = static_cast<const char*>(in.data());
  char* dst = static_cast<char*>(out.data());
  for_each_block(blocks, [&](std::int64_t source_major, std::int64_t expert_major, std::int64_t rows) {
    const std::int64_t from = to_expert_major ? source_major : expert_major;
    const std::int64_t to = to_expert_major ? expert_major : source_major;
    SY_CHECK(from + rows <= in.size(0) && to + rows <= out.size(0))
        << op << ": the blocks need " << from + rows << " rows of in and " << to + rows << " of out, have " << in.size(0)
        << " and " << out.size(0);
    std::copy(src + std::size_t(from) * row_bytes, src + std::size_t(from + rows) * row_bytes,
              dst + std::size_t(to) * row_bytes);
  });
}

}  // namespace sy
