// Flash attention for causal MHA / GQA / MQA in bf16 on tensor cores (mma.sync m16n8k16, fp32
// accumulation), forward and backward, for head dims 64 and 128.
//
// Nothing of size [T, T] reaches device memory: the forward keeps a running max and sum per
// query row (online softmax) and saves only the row's log-sum-exp; the backward recomputes the
// probabilities from it. Key tiles are 64 rows; a block is 4 warps. In the backward each warp
// owns 16 rows of a 64-row tile; in the forward at D = 64 each warp owns 32 query rows (two m16
// tiles sharing every K and V fragment), 128 per block. The backward is two kernels so that every
// output element has one writer and the result is bitwise deterministic (no atomics): one walks
// the query tiles of each key tile (dK, dV, summed over the g query heads of a kv head in
// registers) and also writes each 64 x 64 tile of dS in bf16 to a scratch buffer; the other walks
// the key tiles of each query tile and forms dQ = scale dS K from those tiles, one product instead
// of recomputing S, P and dP (three).
//
// Every [B, H, T, D] operand is a view with its own B, H and T strides (HeadView), so q, k and v
// are read in place from the token-major qkv projection and out, dq, dk, dv are written straight
// into token-major rows: the attention block needs no head-layout copies.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16): lane = 4 * g + t. A (16x16): a0 = (g, 2t..2t+1),
// a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..). B (16x8, k x n): b0 = (k 2t..2t+1, n g),
// b1 = (k 2t+8.., n g). C (16x8): c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..). Two adjacent C
// tiles of a row block are exactly one A fragment of the next product, so P and dS go from
// accumulators to operands without shared memory.
#include <cuda_bf16.h>

#include <climits>
#include <cmath>

#include "core/ops/elementwise_map.cuh"
#include "core/ops/flash_attention_tiles.cuh"

namespace sy::cuda {
namespace {

// ---- forward -----------------------------------------------------------------------------------
// m16 tiles of query rows per warp in the forward: two at D = 64 (32 rows, 128 per block); one at
// D = 128, where two would spill the accumulators out of registers.
template <int D>
constexpr int kForwardTiles = D == 64 ? 2 : 1;
template <int D>
constexpr int kForwardRows = 4 * 16 * kForwardTiles<D>;  // query rows per block

// Grid (query tiles of kForwardRows, Hq, B). out [B, Hq, T, D]; lse [B, Hq, T] natural log-sum-exp
// of the scaled scores of each row. At D = 64 each warp owns 32 query rows as two m16 tiles, so
// every K and V fragment read from shared memory feeds two MMAs: half the shared-memory traffic
// per FLOP of 16 rows per warp, and two independent accumulation chains per warp.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const HeadView q, const HeadView k, const HeadView v,
                                                                 const HeadView out, float* __restrict__ lse, Shape s,
                                                                 float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  const auto [q_tile, head, batch, kv_head] = query_block(s);
  const std::int64_t q_off = (std::int64_t(batch) * s.heads + head) * s.seq;  // into lse
  const bf16* q_head = q.head_at(batch, head);
  const bf16* k_head = k.head_at(batch, kv_head);
  const bf16* v_head = v.head_at(batch, kv_head);
  // Tiles: Q (MT tiles of 64 rows), then K and V of buffer 0, then of buffer 1.
  constexpr int MT = kForwardTiles<D>, kRows = kForwardRows<D>, kWarpRows = 16 * MT;
  auto ks = [&](int buf) { return tile_at<D>(smem, MT + 2 * buf); };
  auto vs = [&](int buf) { return tile_at<D>(smem, MT + 1 + 2 * buf); };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = q_tile * kRows;
  const int row0 = q0 + warp * kWarpRows;  // this warp's first query row
  const SmemTile<D> qs = tile_at<D>(smem, warp * kWarpRows / kTile);
  const int qs_row0 = warp * kWarpRows % kTile;  // and its first row in that Q tile

#pragma unroll
  for (int m = 0; m < MT; ++m) load_tile(tile_at<D>(smem, m), q_head, q.row, q0 + m * kTile, s.seq);
  cp_async_commit();
  load_tile(ks(0), k_head, k.row, 0, s.seq);
  load_tile(vs(0), v_head, v.row, 0, s.seq);
  cp_async_commit();

  float o[MT][D / 8][4], row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    zero(o[m]);
    row_max[m][0] = row_max[m][1] = -INFINITY;
    row_sum[m][0] = row_sum[m][1] = 0.0f;
  }
  const int last_row = min(q0 + kRows, s.seq) - 1;
  const int kv_tiles = last_row / kTile + 1;  // key tiles at or left of the block's last row
  for (int j = 0; j < kv_tiles; ++j) {
    next_kv_tile<D>(ks((j + 1) & 1), vs((j + 1) & 1), k_head, k.row, v_head, v.row, j, kv_tiles, s.seq);
    // A warp whose rows all sit left of this key tile has nothing to add (warp-uniform).
    if (j * kTile <= row0 + kWarpRows - 1) {
      float sc[MT][8][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) zero(sc[m]);
      product_nt_tiles<D, MT>(sc, qs, qs_row0, ks(j & 1));
      const bool masked = j * kTile + kTile - 1 > row0;  // some column right of some row
#pragma unroll
      for (int m = 0; m < MT; ++m)
        online_softmax_step<D>(sc[m], o[m], row_max[m], row_sum[m], row0 + 16 * m, j * kTile, masked, scale_log2);
      product_pv_tiles<D, MT>(o, sc, vs(j & 1));
    }
    __syncthreads();  // every warp is done with buffer j & 1 before it is refilled
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 1);
      row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 2);
      inv[r] = 1.0f / row_sum[m][r];
      const int row = row0 + 16 * m + g + 8 * r;
      if (t == 0 && row < s.seq) lse[q_off + row] = (row_max[m][r] + log2f(row_sum[m][r])) / kLog2e;
    }
    store_rows<D>(out.head_at(batch, head), out.row, o[m], row0 + 16 * m, s.seq, inv[0], inv[1]);
  }
}

// ---- backward ----------------------------------------------------------------------------------
// delta[row] = sum_d dout[row, d] * out[row, d] (fp32): the row term of the softmax backward.
// Rows are numbered as delta's [B, Hq, T]. D/8 lanes share a row, each reading 16 bytes of out
// and of dout (views are 16-byte aligned), and sum with shuffles inside their group.
template <int D>
__global__ void flash_delta_kernel(const HeadView out, const HeadView dout, float* __restrict__ delta, Shape s,
                                   std::int64_t rows) {
  constexpr int kLanesPerRow = D / 8;
  static_assert(kLanesPerRow <= 32 && 32 % kLanesPerRow == 0);
  const std::int64_t thread = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t row = thread / kLanesPerRow;
  const int part = int(thread % kLanesPerRow);
  float sum = 0.0f;
  if (row < rows) {  // rows past the end still take part in the shuffles
    const int t = int(row % s.seq);
    const std::int64_t bh = row / s.seq;
    const int head = int(bh % s.heads), batch = int(bh / s.heads);
    float o[8], d[8];
    load_vec8(out.head_at(batch, head) + t * out.row + 8 * part, o);
    load_vec8(dout.head_at(batch, head) + t * dout.row + 8 * part, d);
#pragma unroll
    for (int k = 0; k < 8; ++k) sum += o[k] * d[k];
  }
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (row < rows && part == 0) delta[row] = sum;
}

// dK, dV. Grid (key tiles, Hkv, B). Each warp owns 16 key rows; the block walks the query tiles
// at or below its key tile for each of the g query heads of its kv head. In the transposed
// frame (rows = keys, columns = queries): P^T = exp2(K Q^T scale - lse), dV += P^T dO,
// dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q (scaled at the end).
// At D = 64 the register cap of 3 blocks per SM (168) costs a few bytes of spill and buys 12
// resident warps instead of 8: the step is a chain of dependent products, so occupancy is what
// hides its latency.
template <int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 3 : 1) flash_backward_dkdv_kernel(
    const HeadView q, const HeadView k, const HeadView v, const HeadView dout, const float* __restrict__ lse,
    const float* __restrict__ delta, const HeadView dk, const HeadView dv, bf16* __restrict__ ds_tiles, Shape s,
    float scale, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  const auto w = DkdvWalk<D>::of_block(smem, s);
  const int key0 = w.k_tile * kTile + (threadIdx.x / 32) * 16;  // this warp's first key
  w.load_keys(k, v);
  const int steps = w.steps();
  auto at = w.first(), next = at;
  w.issue(next, 0, q, dout, lse, delta);

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
  zero(dk_acc);
  zero(dv_acc);
  const int row0 = (threadIdx.x / 32) * 16;  // this warp's first row in the K and V tiles
  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      // Buffer (step + 1) & 1 was last read in step - 1, which ended with a barrier.
      w.advance(next);
      w.issue(next, (step + 1) & 1, q, dout, lse, delta);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int buf = step & 1, q_tile = at.q_tile;
    float p[8][4];
    zero(p);
    product_nt<D>(p, w.ks(), row0, w.qs(buf));  // S^T: rows keys, columns queries
    transposed_probabilities(p, key0, q_tile, w.k_tile, w.row_lse(buf), s, scale_log2);
    product_pv<D>(dv_acc, p, w.dos(buf));
    float ds[8][4];
    zero(ds);
    product_nt<D>(ds, w.vs(), row0, w.dos(buf));  // dP^T
    transposed_ds(ds, p, w.row_delta(buf));
    product_pv<D>(dk_acc, ds, w.qs(buf));
    store_ds_tile(ds, w.ds_stage(), ds_tiles + ds_tile_offset(s, w.batch, at.head, q_tile, w.k_tile));
    w.advance(at);
    __syncthreads();  // every warp is done with buffer buf before it is refilled
  }
  store_rows<D>(dk.head_at(w.batch, w.kv_head), dk.row, dk_acc, key0, s.seq, scale, scale);
  store_rows<D>(dv.head_at(w.batch, w.kv_head), dv.row, dv_acc, key0, s.seq, 1.0f, 1.0f);
}

// dQ. Grid (query tiles, Hq, B): dQ = scale * dS K over the key tiles at or left of the
// diagonal, reading the dS^T tiles the dK/dV kernel wrote. Each step streams one dS^T tile and
// one K tile (double-buffered); each warp owns 16 query rows.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_backward_dq_kernel(const bf16* __restrict__ ds_tiles,
                                                                     const HeadView k, const HeadView dq, Shape s,
                                                                     float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const auto [q_tile, head, batch, kv_head] = query_block(s);
  const bf16* k_head = k.head_at(batch, kv_head);
  const bf16* ds_row = ds_tiles + ds_tile_offset(s, batch, head, q_tile, 0);  // tile j at + j * 64 * 64
  // Buffer b: the dS^T tile (64 x 64), then the K tile (64 x D).
  auto dss = [&](int buf) {
    return SmemTile<kTile>{reinterpret_cast<bf16*>(smem) + buf * (kTile * kTile + kTile * D)};
  };
  auto ks = [&](int buf) { return SmemTile<D>{dss(buf).base + kTile * kTile}; };
  auto issue = [&](int j) {
    load_tile(dss(j & 1), ds_row + std::int64_t(j) * kTile * kTile, kTile, 0, kTile);
    load_tile(ks(j & 1), k_head, k.row, j * kTile, s.seq);
    cp_async_commit();
  };
  const int warp = threadIdx.x / 32;
  issue(0);
  float dq_acc[D / 8][4];
  zero(dq_acc);
  const int kv_tiles = q_tile + 1;
  for (int j = 0; j < kv_tiles; ++j) {
    if (j + 1 < kv_tiles) {
      issue(j + 1);  // buffer (j + 1) & 1 was last read in step j - 1, which ended with a barrier
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      std::uint32_t a[4];
      load_a_rows_k(a, dss(j & 1), warp * 16, kk * 16);
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        std::uint32_t b[4];
        load_b_rows_k(b, ks(j & 1), kk * 16, dd * 16);
        mma(dq_acc[2 * dd], a, b[0], b[1]);
        mma(dq_acc[2 * dd + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  store_rows<D>(dq.head_at(batch, head), dq.row, dq_acc, q_tile * kTile + warp * 16, s.seq, scale, scale);
}

template <int D>
constexpr std::size_t forward_smem_bytes() {
  return std::size_t(kForwardTiles<D> + 4) * kTile * D * sizeof(bf16);
}
constexpr std::size_t dq_smem_bytes(int d) { return 2 * (kTile * kTile + kTile * d) * sizeof(bf16); }

template <int D>
void forward_d(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
               StreamRef stream) {
  static const bool once = (allow_smem(flash_forward_kernel<D>, forward_smem_bytes<D>()), true);
  (void)once;
  const Shape s = shape_of(q, k);
  const dim3 grid = causal_grid(s.heads, q.size(0), (s.seq + kForwardRows<D> - 1) / kForwardRows<D>);
  const float scale_log2 = kLog2e / std::sqrt(float(D));
  flash_forward_kernel<D><<<grid, kThreads, forward_smem_bytes<D>(), to_cuda(stream)>>>(
      view_of(q), view_of(k), view_of(v), view_of(out), static_cast<float*>(lse.data()), s, scale_log2);
  SY_CUDA_LAUNCH();
}

// The scratch: each row's delta (f32), then from a 256-byte boundary the dS tiles (bf16).
std::int64_t delta_floats(std::int64_t rows) { return (rows + 63) / 64 * 64; }

template <int D>
void backward_d(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& scratch,
                bool wgmma, StreamRef stream) {
  static const bool once = (allow_smem(flash_backward_dkdv_kernel<D>, DkdvWalk<D>::smem_bytes()),
                            allow_smem(flash_backward_dq_kernel<D>, dq_smem_bytes(D)), true);
  (void)once;
  const Shape s = shape_of(q, k);
  const float scale = 1.0f / std::sqrt(float(D)), scale_log2 = kLog2e * scale;
  const std::int64_t rows = lse.numel();
  float* delta = static_cast<float*>(scratch.data());
  bf16* ds_tiles = reinterpret_cast<bf16*>(delta + delta_floats(rows));
  constexpr int kDeltaThreads = 256;
  flash_delta_kernel<D><<<grid_for(rows * (D / 8), kDeltaThreads), kDeltaThreads, 0, to_cuda(stream)>>>(
      view_of(out), view_of(dout), delta, s, rows);
  SY_CUDA_LAUNCH();
  const unsigned tiles = unsigned((s.seq + kTile - 1) / kTile);
  if (wgmma) {
    flash_backward_dkdv_wgmma(q, k, v, dout, lse, delta, dk, dv, ds_tiles, stream);
  } else {
      flash_backward_dkdv_kernel<D><<<causal_grid(s.kv_heads, q.size(0), tiles), kThreads,
                                    DkdvWalk<D>::smem_bytes(), to_cuda(stream)>>>(
        view_of(q), view_of(k), view_of(v), view_of(dout), static_cast<const float*>(lse.data()), delta, view_of(dk),
        view_of(dv), ds_tiles, s, scale, scale_log2);
    SY_CUDA_LAUNCH();
  }
  flash_backward_dq_kernel<D><<<causal_grid(s.heads, q.size(0), tiles), kThreads, dq_smem_bytes(D),
                                to_cuda(stream)>>>(ds_tiles, view_of(k), view_of(dq), s, scale);
  SY_CUDA_LAUNCH();
}

}  // namespace

bool flash_attention_head_dim_supported(std::int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

std::int64_t flash_attention_scratch_floats(std::int64_t batch, std::int64_t heads, std::int64_t seq) {
  SY_CHECK(seq <= INT_MAX / 2) << "flash attention: sequence length " << seq << " is too long";
  const std::int64_t ds_elements = batch * heads * ds_tiles_per_head(int(seq)) * kTile * kTile;
  return delta_floats(batch * heads * seq) + ds_elements / 2;  // two bf16 per float
}

void flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                             StreamRef stream) {
  if (q.numel() == 0) return;
  if (q.size(3) == 64) {
    forward_d<64>(q, k, v, out, lse, stream);
  } else {
    forward_d<128>(q, k, v, out, lse, stream);
  }
}

void flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                              const Tensor& dv, const Tensor& scratch, bool wgmma, StreamRef stream) {
  if (q.numel() == 0) return;
  if (q.size(3) == 64) {
    backward_d<64>(q, k, v, out, lse, dout, dq, dk, dv, scratch, wgmma, stream);
  } else {
    backward_d<128>(q, k, v, out, lse, dout, dq, dk, dv, scratch, false, stream);
  }
}

}  // namespace sy::cuda
