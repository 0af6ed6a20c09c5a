//! The device an executable runs on: one wgpu instance, adapter, device and
//! queue, chosen from `WGPU_BACKEND` (e.g. `vulkan`) when it is set, with
//! the adapter's own limits. Errors wgpu would report asynchronously (and
//! by default panic on) are collected and returned as `Result`s.

use std::sync::{Arc, Mutex};

/// The backends `WGPU_BACKEND` names, or all the build has.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// A device and its queue.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Whether compute passes can write timestamps.
    pub timestamps: bool,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.adapter())
    }
}

impl Gpu {
    /// Open the first adapter of the backends `WGPU_BACKEND` names (all
    /// the build has, if unset), preferring a discrete GPU.
    pub fn open() -> Result<Gpu, String> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends();
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| {
            format!(
                "no GPU adapter ({e}); on Linux without a GPU, install Mesa's software Vulkan driver (mesa-vulkan-drivers) and set WGPU_BACKEND=vulkan"
            )
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamps inside passes time each step's shaders in profiles.
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| format!("GPU device on {}: {e}", info.name))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Gpu {
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            device,
            queue,
            info,
            limits,
            errors,
        })
    }

    /// Every adapter wgpu sees on the backends `WGPU_BACKEND` names (all,
    /// if unset): `name (backend, driver, device type)`.
    pub fn adapters() -> Vec<String> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends();
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends()))
            .into_iter()
            .map(|a| {
                let i = a.get_info();
                format!(
                    "{} ({:?}, {} {}, {:?})",
                    i.name, i.backend, i.driver, i.driver_info, i.device_type
                )
            })
            .collect()
    }

    /// The adapter as reports show it: `name (backend, driver)`.
    pub fn adapter(&self) -> String {
        format!(
            "{} ({:?}, {})",
            self.info.name,
            self.info.backend,
            if self.info.driver.is_empty() {
                "no driver name"
            } else {
                &self.info.driver
            }
        )
    }

    /// Errors the device reported since the last call, as one `Err`.
    pub fn check(&self, what: &str) -> Result<(), String> {
        let errs: Vec<String> = match self.errors.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => vec!["error log poisoned".into()],
        };
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: {}", errs.join("; ")))
        }
    }

    /// Wait until the queue is idle.
    pub fn wait(&self) -> Result<(), String> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| format!("GPU wait: {e}"))
    }
}
