"""The cuda backend's check of the GPU and driver against what segfast._C carries
(segfast/backends.py cuda_fit_reason), on made-up capabilities and versions."""

import pytest

from segfast.backends import cuda_fit_reason

RELEASE = ["75-real", "80-real", "86-real", "89-real", "90-real", "100-real", "120"]  # CMakeLists.txt default


@pytest.mark.parametrize("cap", [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0),
                                 (12, 1)])
def test_release_archs_run_on_supported_gpus(cap):
    assert cuda_fit_reason(cap, 12040, RELEASE, 12080) is None  # SASS: any 12.x driver will do
    assert cuda_fit_reason(cap, 13000, RELEASE, 12080) is None


def test_older_gpu_than_any_sass_is_refused_with_the_fix():
    r = cuda_fit_reason((7, 0), 12080, RELEASE, 12080)
    assert r is not None and "compute capability 7.0" in r and "sm_75" in r
    assert "-DCMAKE_CUDA_ARCHITECTURES=70" in r and "triton" in r


def test_newer_gpu_runs_ptx_only_with_a_new_enough_driver():
    assert cuda_fit_reason((13, 0), 12080, RELEASE, 12080) is None  # compute_120 PTX, JIT by the driver
    r = cuda_fit_reason((13, 0), 12060, RELEASE, 12080)
    assert r is not None and "PTX" in r and "12.8" in r and "12.6" in r and "update the NVIDIA driver" in r


def test_driver_older_than_the_runtime_major_is_refused():
    r = cuda_fit_reason((9, 0), 12080, RELEASE, 13000)
    assert r is not None and "CUDA 13.0 runtime" in r and "580" in r and "12.8" in r
    # minor version compatibility: a 12.2 driver runs 12.8 SASS
    assert cuda_fit_reason((9, 0), 12020, RELEASE, 12080) is None


def test_no_driver():
    r = cuda_fit_reason((8, 0), 0, RELEASE, 12080)
    assert r is not None and "no NVIDIA driver" in r


def test_sass_needs_the_same_major_and_no_higher_minor():
    assert cuda_fit_reason((8, 6), 12080, ["80-real"], 12080) is None
    assert cuda_fit_reason((8, 0), 12080, ["86-real"], 12080) is not None
    assert cuda_fit_reason((9, 0), 12080, ["80-real"], 12080) is not None  # no PTX to JIT
    assert cuda_fit_reason((9, 0), 12080, ["80"], 12080) is None  # plain '80': SASS and PTX


def test_arch_specific_sass_runs_on_that_gpu_only():
    assert cuda_fit_reason((9, 0), 12080, ["90a-real"], 12080) is None
    assert cuda_fit_reason((10, 0), 12080, ["90a-real"], 12080) is not None
