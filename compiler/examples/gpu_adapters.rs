//! Lists the GPU adapters wgpu sees (on the backends `WGPU_BACKEND` names),
//! one per line, and whether Kiln can open one: what `scripts/gpu-check.sh`
//! prints first.

fn main() {
    let all = kiln_runtime::gpu::Gpu::adapters();
    if all.is_empty() {
        println!("no adapter: wgpu sees no GPU (a Vulkan driver for the card, or mesa-vulkan-drivers for lavapipe, is needed)");
    }
    for a in &all {
        println!("adapter: {a}");
    }
    match kiln_runtime::gpu::Gpu::open() {
        Ok(g) => println!("kiln opens: {}", g.adapter()),
        Err(e) => println!("kiln cannot open a device: {e}"),
    }
}
