// Versions of the CUDA runtime compiled in and of the driver present, for the
// backend check (segfast/backends.py cuda_mismatch).
#include <cuda_runtime.h>

namespace segfast {
namespace cuda {

int runtime_version() { return CUDART_VERSION; }

// cudaDriverGetVersion needs no device and no context: 0 when no driver is loaded.
int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

}  // namespace cuda
}  // namespace segfast
