// Op micro-benchmarks: device copy bandwidth, GEMM TFLOP/s across the model's shapes, and
// attention forward/backward, each next to the ceilings measured in the same run (the copy
// bandwidth and the best large square GEMM) and the datasheet peak where the device is known.
#include "bench/op_bench.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench/timing.h"
#include "core/ops.h"
#include "core/storage.h"

namespace sy::bench {
namespace {

struct Options {
  Device device = Device::cpu;
  int repeats = 10;
};

// Dense bf16 datasheet peaks (SXM parts), for the "% of peak" column only.
double datasheet_bf16_tflops(const std::string& name) {
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989.0;
  if (name.find("A100") != std::string::npos) return 312.0;
  return 0.0;
}

double measure_copy_gbs(const Options& opt, StreamRef stream) {
  const std::int64_t n = opt.device == Device::cuda ? (std::int64_t(1) << 28) : (std::int64_t(1) << 24);  // 1 GiB / 64 MiB of f32
  OwnedTensor src = random_input({n}, DType::f32, opt.device, 1);
  OwnedTensor dst(Shape{n}, DType::f32, opt.device);
  Timing t = time_repeated([&] { copy(dst, src, stream); }, opt.device == Device::cuda, stream, 2, opt.repeats);
  const double bytes = 2.0 * double(src.view().bytes());  // read + write
  std::printf("%-34s %10.3f ms %10.1f GB/s  (bytes read + written, %.0f MiB)\n", "device copy", t.median_ms,
              bytes / t.median_ms * 1e-6, double(src.view().bytes()) / (1 << 20));
  return bytes / t.median_ms * 1e-6;
}

struct GemmCase {
  const char* name;
  std::int64_t batch, m, n, k;
  DType dtype;
};

double run_gemm(const GemmCase& c, const Options& opt, StreamRef stream, double ceiling_tflops, double peak_tflops) {
  OwnedTensor a = random_input({c.batch, c.m, c.k}, c.dtype, opt.device, 2);
  OwnedTensor b = random_input({c.batch, c.k, c.n}, c.dtype, opt.device, 3);
  OwnedTensor out(Shape{c.batch, c.m, c.n}, c.dtype, opt.device);
  auto body = [&] {
    if (c.batch == 1) {
      gemm(a.view().select(0), b.view().select(0), out.view().select(0), false, false, 1.0f, 0.0f, stream);
    } else {
      gemm_batched(a, b, out, false, false, 1.0f, 0.0f, stream);
    }
  };
  Timing t = time_repeated(body, opt.device == Device::cuda, stream, 3, opt.repeats);
  const double flops = 2.0 * double(c.batch) * double(c.m) * double(c.n) * double(c.k);
  const double tflops = flops / t.median_ms * 1e-9;
  std::printf("%-34s %5s %10.3f ms %s", c.name, dtype_name(c.dtype), t.median_ms, flops_text(tflops).c_str());
  if (ceiling_tflops > 0) std::printf("  %5.1f%% of measured", 100.0 * tflops / ceiling_tflops);
  if (peak_tflops > 0) std::printf("  %5.1f%% of datasheet", 100.0 * tflops / peak_tflops);
  std::printf("\n");
  return tflops;
}

struct AttentionCase {
  std::int64_t batch, heads, kv_heads, seq, head_dim;
};

// Times one attention implementation; returns forward + backward median ms.
double run_attention(const AttentionCase& c, DType dtype, bool flash, const Options& opt, StreamRef stream,
                     double ceiling_tflops) {
  OwnedTensor q = random_input({c.batch, c.heads, c.seq, c.head_dim}, dtype, opt.device, 4);
  OwnedTensor k = random_input({c.batch, c.kv_heads, c.seq, c.head_dim}, dtype, opt.device, 5);
  OwnedTensor v = random_input({c.batch, c.kv_heads, c.seq, c.head_dim}, dtype, opt.device, 6);
  OwnedTensor dout = random_input({c.batch, c.heads, c.seq, c.head_dim}, dtype, opt.device, 7);
  OwnedTensor out(q.view().shape(), dtype, opt.device), dq(q.view().shape(), dtype, opt.device);
  OwnedTensor dk(k.view().shape(), dtype, opt.device), dv(v.view().shape(), dtype, opt.device);
  // probs/dprobs for the [T, T] path; lse and the backward's scratch for flash.
  const Shape saved = flash ? Shape{c.batch, c.heads, c.seq} : Shape{c.batch, c.heads, c.seq, c.seq};
  const DType saved_dtype = flash ? DType::f32 : dtype;
  OwnedTensor probs(saved, saved_dtype, opt.device);
  OwnedTensor dprobs(flash ? flash_attention_scratch_shape(q) : saved, saved_dtype, opt.device);
  const bool gpu = opt.device == Device::cuda;
  Timing fwd = time_repeated(
      [&] {
        if (flash) flash_attention_forward(q, k, v, out, probs, stream);
        else attention_forward(q, k, v, out, probs, stream);
      },
      gpu, stream, 2, opt.repeats);
  Timing bwd = time_repeated(
      [&] {
        if (flash) flash_attention_backward(q, k, v, out, probs, dout, dq, dk, dv, dprobs, stream);
        else attention_backward(q, k, v, probs, dout, dq, dk, dv, dprobs, stream);
      },
      gpu, stream, 2, opt.repeats);
  // Causal model FLOPs (what a flash kernel is credited with): forward 2 GEMMs over half the
  // T x T scores, backward 4.
  const double fwd_flops = 2.0 * 2.0 * double(c.batch * c.heads) * double(c.seq * c.seq) * double(c.head_dim) / 2.0;
  const double fwd_tflops = fwd_flops / fwd.median_ms * 1e-9, bwd_tflops = 2.0 * fwd_flops / bwd.median_ms * 1e-9;
  char name[96];
  std::snprintf(name, sizeof name, "B%lld Hq%lld Hkv%lld T%lld D%lld", (long long)c.batch, (long long)c.heads,
                (long long)c.kv_heads, (long long)c.seq, (long long)c.head_dim);
  std::printf("%-30s %5s %-5s fwd %8.3f ms %s | bwd %8.3f ms %s", name, dtype_name(dtype), flash ? "flash" : "probs",
              fwd.median_ms, flops_text(fwd_tflops).c_str(), bwd.median_ms, flops_text(bwd_tflops).c_str());
  if (ceiling_tflops > 0) std::printf(" | fwd+bwd %5.1f%% of GEMM ceiling", 100.0 * 3.0 * fwd_flops /
                                                                               (fwd.median_ms + bwd.median_ms) * 1e-9 /
                                                                               ceiling_tflops);
  std::printf("\n");
  if (flash && flash_attention_wgmma_supported(q)) {
    // The Hopper forward beside the mma.sync one (training uses the latter until this wins).
    Timing wg = time_repeated([&] { flash_attention_forward_wgmma(q, k, v, out, probs, stream); }, gpu, stream, 2,
                              opt.repeats);
    Timing wg_bwd = time_repeated(
        [&] { flash_attention_backward_wgmma(q, k, v, out, probs, dout, dq, dk, dv, dprobs, stream); }, gpu, stream,
        2, opt.repeats);
    std::printf("%-30s %5s %-5s fwd %8.3f ms %s | bwd %8.3f ms %s | %.2fx and %.2fx the mma.sync kernels\n", "", "",
                "wgmma", wg.median_ms, flops_text(fwd_flops / wg.median_ms * 1e-9).c_str(), wg_bwd.median_ms,
                flops_text(2.0 * fwd_flops / wg_bwd.median_ms * 1e-9).c_str(), fwd.median_ms / wg.median_ms,
                bwd.median_ms / wg_bwd.median_ms);
  }
  return fwd.median_ms + bwd.median_ms;
}

// Both implementations side by side where flash attention runs, with their ratio.
void compare_attention(const AttentionCase& c, DType dtype, const Options& opt, StreamRef stream,
                       double ceiling_tflops) {
  const double probs_ms = run_attention(c, dtype, false, opt, stream, ceiling_tflops);
  if (!flash_attention_supported(opt.device, dtype, c.head_dim)) return;
  const double flash_ms = run_attention(c, dtype, true, opt, stream, ceiling_tflops);
  std::printf("%-30s flash is %.2fx the probs path (fwd+bwd)\n", "", probs_ms / flash_ms);
}

void print_usage() {
  std::printf(
      "usage: switchyard bench ops [--device cpu|cuda] [--repeats N]\n"
      "  Times device copy, GEMM (square and the Switch model's shapes) and causal GQA attention\n"
      "  forward/backward; prints medians, TFLOP/s and GB/s next to the ceilings measured in the\n"
      "  same run. Default device: cuda when a GPU is present, else cpu.\n");
}

}  // namespace

int run_op_bench(const std::vector<std::string>& args) {
  Options opt;
  opt.device = cuda_device_count() > 0 ? Device::cuda : Device::cpu;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      print_usage();
      return 0;
    } else if (a == "--device" && i + 1 < args.size()) {
      const std::string& d = args[++i];
      SY_CHECK(d == "cpu" || d == "cuda") << "bench ops: --device must be cpu or cuda, got '" << d << "'";
      opt.device = d == "cuda" ? Device::cuda : Device::cpu;
    } else if (a == "--repeats" && i + 1 < args.size()) {
      opt.repeats = std::atoi(args[++i].c_str());
      SY_CHECK(opt.repeats >= 1) << "bench ops: --repeats must be a positive integer, got '" << args[i] << "'";
    } else {
      SY_FAIL() << "bench ops: unknown argument '" << a << "' (see switchyard bench ops --help)";
    }
  }
  SY_CHECK(opt.device == Device::cpu || cuda_device_count() > 0) << "bench ops: --device cuda but no GPU is present";
  Stream stream_owner = opt.device == Device::cuda ? Stream::create() : Stream();
  StreamRef stream = stream_owner.ref();
  const bool gpu = opt.device == Device::cuda;
  const std::string device_text = gpu ? cuda_device_description(0) : std::string("CPU (reference backend)");
  std::printf("switchyard bench ops on %s, median of %d repeats after warm-up\n\n", device_text.c_str(), opt.repeats);

  std::printf("== memory ==\n");
  const double copy_gbs = measure_copy_gbs(opt, stream);

  std::printf("\n== GEMM (C = A B, row-major) ==\n");
  const double peak = gpu ? datasheet_bf16_tflops(device_text) : 0.0;
  double ceiling = 0;
  if (gpu) {
    ceiling = run_gemm({"square 8192^3 (ceiling)", 1, 8192, 8192, 8192, DType::bf16}, opt, stream, 0, peak);
    run_gemm({"square 4096^3", 1, 4096, 4096, 4096, DType::bf16}, opt, stream, ceiling, peak);
    run_gemm({"square 4096^3", 1, 4096, 4096, 4096, DType::f32}, opt, stream, ceiling, 0);
    // Switch-base shapes at 16k tokens: QKV projection (768 -> 768 + 2*256), attention output,
    // LM head (768 -> 32768), expert FFN up/down as one batched GEMM over 8 experts of 2560 slots.
    run_gemm({"qkv 16384x1280x768", 1, 16384, 1280, 768, DType::bf16}, opt, stream, ceiling, peak);
    run_gemm({"attn out 16384x768x768", 1, 16384, 768, 768, DType::bf16}, opt, stream, ceiling, peak);
    run_gemm({"lm head 16384x32768x768", 1, 16384, 32768, 768, DType::bf16}, opt, stream, ceiling, peak);
    run_gemm({"experts up 8x2560x3072x768", 8, 2560, 3072, 768, DType::bf16}, opt, stream, ceiling, peak);
    run_gemm({"experts down 8x2560x768x3072", 8, 2560, 768, 3072, DType::bf16}, opt, stream, ceiling, peak);
  } else {
    ceiling = run_gemm({"square 512^3", 1, 512, 512, 512, DType::f32}, opt, stream, 0, 0);
    run_gemm({"qkv 256x96x64 (tiny model)", 1, 256, 96, 64, DType::f32}, opt, stream, ceiling, 0);
  }

  std::printf("\n== causal attention: probs (batched GEMMs + masked softmax) and flash ==\n");
  if (gpu) {
    compare_attention({16, 12, 4, 1024, 64}, DType::bf16, opt, stream, ceiling);
    compare_attention({4, 16, 16, 2048, 128}, DType::bf16, opt, stream, ceiling);
    compare_attention({8, 32, 8, 1024, 128}, DType::bf16, opt, stream, ceiling);
  } else {
    compare_attention({2, 4, 2, 128, 16}, DType::f32, opt, stream, ceiling);
  }
  std::printf("\nceilings measured in this run: copy %.1f GB/s, GEMM %s", copy_gbs, flops_text(ceiling).c_str());
  if (peak > 0) std::printf(" (datasheet dense bf16 %.0f TFLOP/s)", peak);
  std::printf("\n");
  return 0;
}

}  // namespace sy::bench
