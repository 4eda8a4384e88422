//! The device choice as a pure function over adapter lists: what CI (lavapipe only), an
//! H100 host (GPU beside lavapipe) and mixed machines get for each request.

use super::*;

fn adapter(name: &str, adapter_type: AdapterType) -> AdapterInfo {
    AdapterInfo {
        name: name.into(),
        adapter_type,
        driver: String::new(),
        api: "Vulkan".into(),
    }
}

fn lavapipe() -> AdapterInfo {
    AdapterInfo {
        driver: "llvmpipe (Mesa 22.3.6 (LLVM 15.0.6))".into(),
        ..adapter("llvmpipe (LLVM 15.0.6, 256 bits)", AdapterType::Cpu)
    }
}

fn h100() -> AdapterInfo {
    adapter("NVIDIA H100 80GB HBM3", AdapterType::DiscreteGpu)
}

fn wgpu_on(c: Choice) -> AdapterChoice {
    match c {
        Choice::Wgpu(a) => a,
        other => panic!("expected a wgpu adapter, got {other}"),
    }
}

#[test]
fn auto_never_picks_a_software_adapter() {
    // CI: lavapipe is the only adapter.
    assert_eq!(
        choose(DeviceRequest::Auto, true, &[lavapipe()]),
        Ok(Choice::Cpu)
    );
    // An OpenGL llvmpipe reported as `Other` is still software.
    let gl = AdapterInfo {
        api: "Gl".into(),
        ..adapter("llvmpipe (LLVM 15.0.6, 256 bits)", AdapterType::Other)
    };
    assert!(gl.is_software());
    assert_eq!(choose(DeviceRequest::Auto, true, &[gl]), Ok(Choice::Cpu));
    let swiftshader = adapter("SwiftShader Device (Subzero)", AdapterType::Other);
    assert_eq!(
        choose(DeviceRequest::Auto, true, &[swiftshader]),
        Ok(Choice::Cpu)
    );
    assert_eq!(choose(DeviceRequest::Auto, true, &[]), Ok(Choice::Cpu));
}

#[test]
fn auto_takes_the_gpu_even_when_lavapipe_is_enumerated_first() {
    let c = wgpu_on(choose(DeviceRequest::Auto, true, &[lavapipe(), h100()]).expect("choice"));
    assert_eq!(c.info, h100());
    assert_eq!((c.adapter_type, c.index), (AdapterType::DiscreteGpu, 0));
}

#[test]
fn explicit_wgpu_takes_the_best_adapter_software_included() {
    let c = wgpu_on(choose(DeviceRequest::Wgpu, true, &[lavapipe()]).expect("choice"));
    assert_eq!((c.adapter_type, c.index), (AdapterType::Cpu, 0));
    assert_eq!(c.info, lavapipe());
    let c = wgpu_on(choose(DeviceRequest::Wgpu, true, &[lavapipe(), h100()]).expect("choice"));
    assert_eq!(c.info, h100());
    assert_eq!(
        choose(DeviceRequest::Wgpu, true, &[]),
        Err(DeviceError::NoAdapter)
    );
}

#[test]
fn discrete_beats_integrated_beats_virtual_and_ties_go_to_the_first() {
    let igpu = adapter("Intel(R) UHD Graphics 770", AdapterType::IntegratedGpu);
    let vgpu = adapter("GRID A100-4C", AdapterType::VirtualGpu);
    let other = adapter("Some Other Device", AdapterType::Other);
    for request in [DeviceRequest::Auto, DeviceRequest::Wgpu] {
        let c = wgpu_on(
            choose(
                request,
                true,
                &[other.clone(), vgpu.clone(), igpu.clone(), h100()],
            )
            .expect("choice"),
        );
        assert_eq!(c.info, h100(), "{request}");
        let c = wgpu_on(
            choose(request, true, &[other.clone(), vgpu.clone(), igpu.clone()]).expect("c"),
        );
        assert_eq!(&c.info, &igpu, "{request}");
        let c = wgpu_on(choose(request, true, &[other.clone(), vgpu.clone()]).expect("c"));
        assert_eq!(&c.info, &vgpu, "{request}");
        let c = wgpu_on(choose(request, true, &[lavapipe(), other.clone()]).expect("c"));
        assert_eq!(&c.info, &other, "{request}");
    }
}

#[test]
fn the_index_counts_only_adapters_of_the_same_type() {
    // Two cards and an integrated GPU in between: the first card is DiscreteGpu(0), and with
    // the order reversed the chosen first card is still addressed among discrete ones.
    let a = adapter("NVIDIA H100 80GB HBM3 (0)", AdapterType::DiscreteGpu);
    let b = adapter("NVIDIA H100 80GB HBM3 (1)", AdapterType::DiscreteGpu);
    let igpu = adapter("AMD Radeon Graphics", AdapterType::IntegratedGpu);
    let c = wgpu_on(choose(DeviceRequest::Auto, true, &[igpu.clone(), a.clone(), b]).expect("c"));
    assert_eq!((c.index, c.info), (0, a.clone()));
    let c = wgpu_on(choose(DeviceRequest::Wgpu, true, &[lavapipe(), igpu]).expect("c"));
    assert_eq!((c.adapter_type, c.index), (AdapterType::IntegratedGpu, 0));
    // Two lavapipes (two Vulkan ICD files): the CPU type carries no index.
    let c = wgpu_on(choose(DeviceRequest::Wgpu, true, &[lavapipe(), lavapipe()]).expect("c"));
    assert_eq!((c.adapter_type, c.index), (AdapterType::Cpu, 0));
}

#[test]
fn cpu_is_always_the_cpu_and_wgpu_needs_the_feature() {
    assert_eq!(
        choose(DeviceRequest::Cpu, true, &[h100(), lavapipe()]),
        Ok(Choice::Cpu)
    );
    assert_eq!(
        choose(DeviceRequest::Auto, false, &[h100()]),
        Ok(Choice::Cpu)
    );
    assert_eq!(
        choose(DeviceRequest::Wgpu, false, &[h100()]),
        Err(DeviceError::NotBuilt)
    );
}

#[test]
fn requests_parse_and_unknown_names_are_refused_by_name() {
    assert_eq!("auto".parse::<DeviceRequest>(), Ok(DeviceRequest::Auto));
    assert_eq!("".parse::<DeviceRequest>(), Ok(DeviceRequest::Auto));
    assert_eq!(" CPU ".parse::<DeviceRequest>(), Ok(DeviceRequest::Cpu));
    assert_eq!("wgpu".parse::<DeviceRequest>(), Ok(DeviceRequest::Wgpu));
    assert_eq!("cuda".parse::<DeviceRequest>(), Ok(DeviceRequest::Cuda(0)));
    assert_eq!(
        "cuda:1".parse::<DeviceRequest>(),
        Ok(DeviceRequest::Cuda(1))
    );
    for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1"] {
        let err = bad.parse::<DeviceRequest>().expect_err(bad);
        assert_eq!(
            err.to_string(),
            format!("device `{bad}`: expected one of auto, cpu, wgpu, cuda[:N]")
        );
    }
    for r in [
        DeviceRequest::Auto,
        DeviceRequest::Cpu,
        DeviceRequest::Wgpu,
        DeviceRequest::Cuda(2),
    ] {
        assert_eq!(r.to_string().parse::<DeviceRequest>(), Ok(r));
    }
}

#[test]
fn select_cpu_gives_burn_flex_and_wgpu_without_the_feature_fails() {
    let s = select(DeviceRequest::Cpu).expect("cpu");
    assert_eq!(s.choice, Choice::Cpu);
    assert_eq!(s.device, cpu_device());
    if !wgpu_built() {
        assert_eq!(
            select(DeviceRequest::Wgpu).map(|s| s.choice),
            Err(DeviceError::NotBuilt)
        );
        assert_eq!(
            select(DeviceRequest::Auto).map(|s| s.choice),
            Ok(Choice::Cpu)
        );
    }
}

#[test]
fn reported_kind_name_and_gpu_never_count_a_software_adapter_as_a_gpu() {
    assert_eq!(Choice::Cpu.kind(), "cpu");
    assert_eq!(Choice::Cpu.name(), "burn-flex");
    assert!(!Choice::Cpu.is_gpu());
    let soft = choose(DeviceRequest::Wgpu, true, &[lavapipe()]).unwrap();
    assert_eq!(soft.kind(), "wgpu");
    assert_eq!(soft.name(), "llvmpipe (LLVM 15.0.6, 256 bits)");
    assert!(!soft.is_gpu(), "lavapipe is not a GPU");
    let gpu = choose(DeviceRequest::Wgpu, true, &[lavapipe(), h100()]).unwrap();
    assert!(gpu.is_gpu());
    assert_eq!(gpu.name(), "NVIDIA H100 80GB HBM3");
}

#[test]
fn cpu_only_paths_refuse_other_devices_naming_the_flag() {
    Selected::cpu()
        .require_cpu("the serving engine", "")
        .expect("the CPU runs CPU-only paths");
    let wgpu = Selected {
        device: cpu_device(),
        choice: choose(DeviceRequest::Wgpu, true, &[h100()]).unwrap(),
    };
    let err = wgpu
        .require_cpu("--dtype f32-packed (host decode kernels)", "--dtype f32")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--device wgpu: --dtype f32-packed (host decode kernels) runs only on the CPU \
         (pass --device cpu, or --dtype f32)"
    );
}

fn h100s(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| "NVIDIA H100 80GB HBM3".to_string())
        .collect()
}

#[test]
fn auto_prefers_cuda_then_a_hardware_adapter_then_the_cpu() {
    let cuda = h100s(2);
    let all = [lavapipe(), h100()];
    let offered = |cuda_built: bool, cuda: &[String], adapters: &[AdapterInfo]| -> Choice {
        let o = Offered {
            wgpu_built: true,
            adapters,
            cuda_built,
            cuda,
        };
        choose_among(DeviceRequest::Auto, &o).unwrap()
    };
    let c = offered(true, &cuda, &all);
    assert_eq!(c.kind(), "cuda");
    assert_eq!(c.to_string(), "cuda:0: NVIDIA H100 80GB HBM3");
    assert!(c.is_gpu());
    // Built with cuda but no driver: wgpu's hardware adapter, then the CPU.
    assert_eq!(offered(true, &[], &all).kind(), "wgpu");
    assert_eq!(offered(true, &[], &[lavapipe()]), Choice::Cpu);
    // Devices without the feature are never taken (select does not probe them either).
    assert_eq!(offered(false, &cuda, &all).kind(), "wgpu");
}

#[test]
fn cuda_n_takes_device_n_and_fails_naming_what_is_missing() {
    let cuda = h100s(2);
    let o = Offered {
        cuda_built: true,
        cuda: &cuda,
        ..Offered::default()
    };
    let c = choose_among(DeviceRequest::Cuda(1), &o).unwrap();
    assert_eq!(c.to_string(), "cuda:1: NVIDIA H100 80GB HBM3");
    let err = choose_among(DeviceRequest::Cuda(2), &o).unwrap_err();
    assert_eq!(err, DeviceError::NoCudaDevice { index: 2, found: 2 });
    assert!(
        err.to_string()
            .starts_with("device `cuda:2`: the CUDA driver reports 2 device(s)")
    );
    let unbuilt = Offered::default();
    assert_eq!(
        choose_among(DeviceRequest::Cuda(0), &unbuilt),
        Err(DeviceError::CudaNotBuilt)
    );
    if !cuda_built() {
        assert_eq!(
            select(DeviceRequest::Cuda(0)).map(|s| s.choice),
            Err(DeviceError::CudaNotBuilt)
        );
    }
}
