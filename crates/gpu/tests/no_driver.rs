//! With the Vulkan driver hidden (VK_DRIVER_FILES and VK_ICD_FILENAMES pointing nowhere), `Auto` still
//! answers, on the CPU, and `Gpu` is a clean error. Its own test binary: the environment is set before
//! any Vulkan library is loaded in this process.

use m2m_gpu::{Backend, Compute, Error, Metric, cpu};

#[test]
fn without_a_driver_auto_runs_the_cpu_twins_and_gpu_is_an_error() {
    // SAFETY: the only test of this binary, run before any other thread reads the environment.
    unsafe {
        std::env::set_var("VK_DRIVER_FILES", "/nonexistent/m2m-no-driver.json");
        std::env::set_var("VK_ICD_FILENAMES", "/nonexistent/m2m-no-driver.json");
    }
    let auto = Compute::new(Backend::Auto).unwrap();
    assert!(!auto.is_gpu(), "{}", auto.device_name());
    let (q, x): (Vec<f32>, Vec<f32>) =
        ((0..16).map(|i| i as f32 / 16.0).collect(), (0..64).map(|i| (i % 7) as f32).collect());
    let c = auto.upload(&x, 4).unwrap();
    assert_eq!(auto.scores(&q, &c, Metric::L2).unwrap(), cpu::scores(&q, &x, 4, true));
    assert_eq!(auto.top_k(&q, &c, Metric::InnerProduct, 3).unwrap().len(), 4);
    let gpu = Compute::new(Backend::Gpu);
    assert!(matches!(gpu, Err(Error::NoVulkan { .. } | Error::NotBuilt)), "{gpu:?}");
}
