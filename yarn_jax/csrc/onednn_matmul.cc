// Matrix products through oneDNN's matmul primitive, called from JAX through the XLA FFI.
//
// Why: XLA's CPU backend computes bfloat16 dot products by converting to float32, so a bfloat16
// model runs no faster than a float32 one, while oneDNN (what PyTorch's CPU matmuls run on) uses
// the CPU's AMX tiles or AVX512-BF16 instructions where it has them. For float32 its kernels are
// also at least as fast as XLA's on the shapes of a transformer layer.
//
// y = op(x) @ op(w), row-major, op = transpose when the flag says so: x [M, K] (or [K, M]), w [K, N]
// (or [N, K]), y [M, N]. Inputs float32 or bfloat16 (both the same), y float32 or bfloat16;
// accumulation is float32. One primitive per (shape, dtypes, transposes) is created and cached.
#include <oneapi/dnnl/dnnl.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Matmul {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_desc_t x = nullptr, w = nullptr, y = nullptr;
};

using Key = std::tuple<int64_t, int64_t, int64_t, int, int, bool, bool>;

std::mutex mutex;  // guards the engine, stream and cache (XLA may run two products at once)
dnnl_engine_t engine = nullptr;
dnnl_stream_t stream = nullptr;
std::map<Key, Matmul> cache;

dnnl_data_type_t dnnl_type(ffi::DataType type) {
  return type == ffi::DataType::BF16 ? dnnl_bf16 : dnnl_f32;
}

ffi::Error failed(const char* what, dnnl_status_t status) {
  return ffi::Error::Internal(std::string("onednn_matmul: ") + what + " failed with status " +
                              std::to_string(static_cast<int>(status)));
}

// The cached primitive for one product (created on first use).
ffi::Error primitive_for(const Key& key, Matmul** out) {
  auto found = cache.find(key);
  if (found != cache.end()) {
    *out = &found->second;
    return ffi::Error::Success();
  }
  const auto [m, k, n, in_type, out_type, transpose_x, transpose_w] = key;
  dnnl_status_t status;
  if (!engine) {
    if ((status = dnnl_engine_create(&engine, dnnl_cpu, 0)) != dnnl_success) return failed("engine", status);
    if ((status = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) != dnnl_success)
      return failed("stream", status);
  }
  Matmul mm;
  const dnnl_dims_t x_dims = {m, k}, w_dims = {k, n}, y_dims = {m, n};
  const auto in = static_cast<dnnl_data_type_t>(in_type);
  // A transposed operand is the same logical matrix stored column-major ("ba").
  if ((status = dnnl_memory_desc_create_with_tag(&mm.x, 2, x_dims, in, transpose_x ? dnnl_ba : dnnl_ab)) ||
      (status = dnnl_memory_desc_create_with_tag(&mm.w, 2, w_dims, in, transpose_w ? dnnl_ba : dnnl_ab)) ||
      (status = dnnl_memory_desc_create_with_tag(&mm.y, 2, y_dims, static_cast<dnnl_data_type_t>(out_type),
                                                 dnnl_ab)))
    return failed("memory descriptor", status);
  dnnl_primitive_desc_t desc;
  if ((status = dnnl_matmul_primitive_desc_create(&desc, engine, mm.x, mm.w, nullptr, mm.y, nullptr)))
    return failed("matmul descriptor", status);
  status = dnnl_primitive_create(&mm.primitive, desc);
  dnnl_primitive_desc_destroy(desc);
  if (status) return failed("primitive", status);
  *out = &cache.emplace(key, mm).first->second;
  return ffi::Error::Success();
}

ffi::Error MatmulImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, bool transpose_x,
                      bool transpose_w) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || x.element_type() != w.element_type())
    return ffi::Error::InvalidArgument("onednn_matmul: x and w must be 2-D of one dtype");
  const int64_t m = transpose_x ? xd[1] : xd[0], k = transpose_x ? xd[0] : xd[1];
  const int64_t n = transpose_w ? wd[0] : wd[1];
  if ((transpose_w ? wd[1] : wd[0]) != k || yd[0] != m || yd[1] != n)
    return ffi::Error::InvalidArgument("onednn_matmul: shapes do not match");
  const Key key{m, k, n, static_cast<int>(dnnl_type(x.element_type())), static_cast<int>(dnnl_type(y->element_type())),
                transpose_x, transpose_w};
  std::lock_guard<std::mutex> lock(mutex);
  Matmul* mm;
  if (auto error = primitive_for(key, &mm); error.failure()) return error;
  dnnl_memory_t xm, wm, ym;
  dnnl_status_t status;
  if ((status = dnnl_memory_create(&xm, mm->x, engine, x.untyped_data()))) return failed("memory", status);
  if ((status = dnnl_memory_create(&wm, mm->w, engine, w.untyped_data()))) return failed("memory", status);
  if ((status = dnnl_memory_create(&ym, mm->y, engine, y->untyped_data()))) return failed("memory", status);
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
  status = dnnl_primitive_execute(mm->primitive, stream, 3, args);
  if (status == dnnl_success) status = dnnl_stream_wait(stream);
  dnnl_memory_destroy(xm);
  dnnl_memory_destroy(wm);
  dnnl_memory_destroy(ym);
  return status == dnnl_success ? ffi::Error::Success() : failed("execution", status);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(YarnOnednnMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("transpose_x")
                                  .Attr<bool>("transpose_w"));

// Whether oneDNN has a matmul for this input dtype (1: bfloat16, 0: float32) on this CPU: 1 or 0.
// oneDNN answers by creating one (on a CPU without AVX-512 it has no bfloat16 matmul and says
// unimplemented); Python asks before it offers the product, never assuming from the CPU's name.
extern "C" int YarnOnednnSupports(int bf16) {
  const auto type = static_cast<int>(bf16 ? dnnl_bf16 : dnnl_f32);
  std::lock_guard<std::mutex> lock(mutex);
  Matmul* mm;
  return primitive_for(Key{64, 64, 64, type, type, false, false}, &mm).success() ? 1 : 0;
}
