// Token embedding on CUDA: a row gather forward, a deterministic scatter-add backward. Tokens
// are not range-checked on the host (that would need a sync); a token outside [0, V) reads and
// writes nothing out of bounds: its output row is zero and its gradient is dropped.
#include "core/ops/elementwise_map.cuh"

namespace sy::cuda {
namespace {

constexpr int kForwardBlock = 128;
constexpr std::int64_t kMaxForwardBlocks = 1 << 20;

// out[n, :] = weight[tokens[n], :]. One block per row (grid-stride over rows), threads over
// channels: one token read per row, one coalesced read of the weight row and one coalesced
// write of the output row. Pure copy, so the result is bit-exact in any dtype.
template <class T>
__global__ void embedding_forward_kernel(const std::int32_t* tokens, const T* weight, T* out, std::int64_t rows,
                                         std::int64_t vocab, std::int64_t channels) {
  for (std::int64_t n = blockIdx.x; n < rows; n += gridDim.x) {
    const std::int32_t token = tokens[n];
    T* out_row = out + n * channels;
    if (token < 0 || token >= vocab) {
      for (std::int64_t c = threadIdx.x; c < channels; c += blockDim.x) store_f32(out_row + c, 0.0f);
      continue;
    }
    const T* weight_row = weight + std::int64_t(token) * channels;
    for (std::int64_t c = threadIdx.x; c < channels; c += blockDim.x) out_row[c] = weight_row[c];
  }
}

// dweight[tokens[n], :] += dout[n, :], deterministically and without atomics; or, overwriting,
// dweight[v, :] = the sum of those rows (zero for a token the batch does not hold).
//
// Ownership: vocabulary rows are split into `classes` residue classes (token % classes); warp w
// of block (x, y) owns class y * kClassWarps + w and VEC channels per lane, 32 VEC channels a
// warp from channel 32 VEC x. Each warp walks the tokens in ascending n, 32 at a time: lanes load
// 32 tokens, a ballot marks those of its class, and the warp then adds their dout rows one after
// another. Every dweight element therefore has exactly one writer, which adds its terms in the
// order of n: the bits are the same on every run and equal a sequential fp32 loop over n, for
// either VEC.
//
// Overwriting, the warp keeps a bit per row of its class in shared memory (which rows it has
// written; the same for every lane, as the rows come from a ballot): a row's first term is
// stored instead of added, and once the tokens are done the rows without a bit get zeros. So
// every element is written, none is read before it is, and there is no separate zeroing pass
// over [V, C] (154 MB at V 50304, C 768).
//
// Cost: dout is read once (N*C elements) and each (token, channel) term costs one dweight
// read-modify-write. Every warp also reads all N tokens (4N bytes per warp, served by L1/L2 as
// the 8 warps of a block read the same ones), cheap next to dout. The read-modify-writes of one
// warp are serial, ~N / classes of them for well-spread tokens; a token that dominates the
// batch puts its whole chain on one warp, which then bounds the kernel at ~N L2 round trips
// (the price of determinism without a sort and its scratch buffer). The ops contract gives no
// scratch, which rules out sorting tokens or reducing per-block partials.
//
// One channel a lane (any row width): 256 classes, so at 16384 well-spread tokens each warp's
// chain is ~64 read-modify-writes (with 32 classes, 512-long chains, the kernel took 0.33 ms on
// an H200 at 16384 x 768, bound by them). Eight channels a lane (16-byte rows): a warp covers 256
// channels, so the grid has 8x fewer column blocks, and 1024 classes keep about as many warps
// with chains a quarter as long; each term is then one 16-byte load and two 16-byte
// read-modify-writes instead of eight 2- or 4-byte ones. The scalar form took 0.227 ms a step at
// 16384 x 768 x V 32768 on an H200, and so did the eight-channel form alone: each warp's walk
// over the tokens waited on one 128-byte load per 32 tokens, 512 round trips. The walk now loads
// kTokenBatch x 32 tokens at a time.
constexpr int kClassWarps = 8;
constexpr int kTokenBatch = 8;
constexpr int kScalarClasses = 256;
constexpr int kVectorClasses = 1024;
static_assert(32 * kClassWarps <= 1024, "one block holds kClassWarps warps");
static_assert(kScalarClasses % kClassWarps == 0 && kVectorClasses % kClassWarps == 0);
static_assert((kScalarClasses & (kScalarClasses - 1)) == 0 && (kVectorClasses & (kVectorClasses - 1)) == 0);

// Words of one warp's row bits when overwriting: a bit for each of the ceil(V / classes) rows of
// a class.
std::int64_t class_row_words(std::int64_t vocab, int classes) { return ((vocab + classes - 1) / classes + 31) / 32; }

template <class T, int VEC, bool kOverwrite>
__global__ void embedding_backward_kernel(const std::int32_t* tokens, const T* dout, float* dweight, std::int64_t rows,
                                          std::int64_t vocab, std::int64_t channels, int row_words) {
  constexpr int classes = VEC == 8 ? kVectorClasses : kScalarClasses;  // powers of two: % and / are cheap
  extern __shared__ unsigned class_rows_written[];  // [kClassWarps][row_words], overwrite only
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int token_class = blockIdx.y * kClassWarps + warp;
  const std::int64_t c = (std::int64_t(blockIdx.x) * 32 + lane) * VEC;  // VEC divides channels
  unsigned* written = class_rows_written + std::int64_t(warp) * row_words;
  if constexpr (kOverwrite) {
    for (int i = lane; i < row_words; i += 32) written[i] = 0u;
    __syncwarp();
  }
  // The whole warp runs every iteration (no early exit for c >= channels): the ballot, the
  // shuffle and the row bits need all 32 lanes.
  // Tokens come kTokenBatch ballots at a time: the loads of a batch are in flight together, so
  // the walk waits on memory once per 256 tokens rather than once per 32.
  for (std::int64_t tile = 0; tile < rows; tile += 32 * kTokenBatch) {
    std::int32_t tokens_of[kTokenBatch];
#pragma unroll
    for (int i = 0; i < kTokenBatch; ++i) {
      const std::int64_t n = tile + 32 * i + lane;
      tokens_of[i] = n < rows ? tokens[n] : -1;
    }
#pragma unroll
    for (int i = 0; i < kTokenBatch; ++i) {
      const std::int64_t base = tile + 32 * i;
      const std::int32_t token = tokens_of[i];
      const bool mine = token >= 0 && token < vocab && token % classes == token_class;
      unsigned matches = __ballot_sync(0xffffffffu, mine);
      while (matches != 0u) {
        const int src = __ffs(int(matches)) - 1;  // lowest set bit first: ascending n
        matches &= matches - 1u;
        const std::int32_t row = __shfl_sync(0xffffffffu, token, src);
        bool first = false;
        if constexpr (kOverwrite) {
          const int local = row / classes;  // the row's place in its class
          const unsigned bit = 1u << (local % 32);
          first = (written[local / 32] & bit) == 0u;
          __syncwarp();  // every lane has read the word before lane 0 changes it
          if (lane == 0) written[local / 32] |= bit;
          __syncwarp();
        }
        if (c < channels) {
          float* element = dweight + std::int64_t(row) * channels + c;
          float term[VEC], sum[VEC];
          load_vec<VEC>(dout + (base + src) * channels + c, term);
          if (!first) load_vec<VEC>(element, sum);
#pragma unroll
          for (int k = 0; k < VEC; ++k) sum[k] = first ? term[k] : sum[k] + term[k];
          store_vec<VEC>(element, sum);
        }
      }
    }
  }
  if constexpr (kOverwrite) {
    if (c >= channels) return;
    const float zeros[VEC] = {};
    std::int64_t local = 0;
    for (std::int64_t row = token_class; row < vocab; row += classes, ++local)
      if ((written[local / 32] & (1u << (local % 32))) == 0u) store_vec<VEC>(dweight + row * channels + c, zeros);
  }
}

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& weight, const Tensor& out, StreamRef stream) {
  const std::int64_t rows = tokens.size(0), vocab = weight.size(0), channels = weight.size(1);
  if (rows == 0 || channels == 0) return;
  const unsigned blocks = unsigned(rows < kMaxForwardBlocks ? rows : kMaxForwardBlocks);
  dispatch_float(weight, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    embedding_forward_kernel<T><<<blocks, kForwardBlock, 0, to_cuda(stream)>>>(
        tokens.ptr<std::int32_t>(), static_cast<const T*>(weight.data()), static_cast<T*>(out.data()), rows, vocab,
        channels);
  });
  SY_CUDA_LAUNCH();
}

void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dweight, GradMode mode,
                        StreamRef stream) {
  const std::int64_t rows = tokens.size(0), vocab = dweight.size(0), channels = dweight.size(1);
  const bool overwrite = mode == GradMode::overwrite;
  if (channels == 0 || vocab == 0) return;
  if (rows == 0) {  // no tokens: an overwritten gradient is zero
    if (overwrite) SY_CUDA(cudaMemsetAsync(dweight.data(), 0, std::size_t(dweight.bytes()), to_cuda(stream)));
    return;
  }
  // Eight channels a lane when every row starts on 16 bytes (of dout and of dweight).
  const bool vec = channels % 8 == 0 && reinterpret_cast<std::uintptr_t>(dout.data()) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(dweight.data()) % 16 == 0;
  const int classes = vec ? kVectorClasses : kScalarClasses;
  const std::int64_t row_words = overwrite ? class_row_words(vocab, classes) : 0;
  const std::size_t smem = std::size_t(kClassWarps * row_words) * sizeof(unsigned);
  SY_CHECK(smem <= std::size_t(48) << 10) << "embedding_backward: a vocabulary of " << vocab
                                          << " rows needs more row bits than 48 KiB of shared memory holds";
  const dim3 grid(grid_for(channels, 32 * (vec ? 8 : 1)), unsigned(classes / kClassWarps));
  dispatch_float(dout, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const auto kernel = vec ? (overwrite ? embedding_backward_kernel<T, 8, true> : embedding_backward_kernel<T, 8, false>)
                            : (overwrite ? embedding_backward_kernel<T, 1, true> : embedding_backward_kernel<T, 1, false>);
    kernel<<<grid, 32 * kClassWarps, smem, to_cuda(stream)>>>(tokens.ptr<std::int32_t>(),
                                                              static_cast<const T*>(dout.data()), dweight.ptr<float>(),
                                                              rows, vocab, channels, int(row_words));
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
