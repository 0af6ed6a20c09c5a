//! Matmul, Gemm and convolution as one tiled GEMM shader, and pooling.
//!
//! The GEMM is generated around three WGSL functions the caller's op
//! defines: `load_a(z, m, k)`, `load_b(z, k, n)` and `store(z, m, n, acc)`.
//! A matmul reads its operands with broadcast batch offsets; a convolution
//! is an implicit GEMM (`load_b` computes the input element a patch column
//! holds, padding reads as 0; no im2col buffer), one `z` per group; the
//! store applies the bias, residual, activation and any fused epilogue to
//! the finished element. Convs with few output channels per group
//! (depthwise) take a direct kernel instead, one thread per output.

use std::fmt::Write;

use kiln_ir::Node;

use crate::gpu::kernels::fusion::epilogue_fn;
pub use crate::gpu::kernels::fusion::Epilogue;
use crate::gpu::wgsl::{grid_for, lit, Bind, Dispatch, GpuKernel, Shader, MAX_GROUPS, WG};

/// The tile: BM × BN outputs per workgroup of 16 × 16 threads, each
/// thread 4 × 4, stepping BK along K.
const BM: usize = 64;
const BN: usize = 64;
const BK: usize = 16;

/// The store, through the epilogue when there is one: `v` is the finished
/// value of element `e` of the result.
fn finish_store(
    sh: &mut Shader,
    store: Store,
    out_shape: &[usize],
    data: &mut Vec<Vec<u8>>,
) -> Result<(String, String), String> {
    let (out, apply, what) = match store {
        Store::To(b) => (sh.bind(b, "f32"), "v", String::new()),
        Store::Epilogue(e) => {
            let out = sh.bind(Bind::Result(0), "f32");
            let what = epilogue_fn(sh, e, out_shape, data)?;
            (out, "epi(e, v)", what)
        }
    };
    Ok((format!("{out}[e] = {apply};"), what))
}

/// Where a matmul or conv puts its finished elements.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// As they are, into this binding (the result, or a scratch buffer a
    /// later shader of the step reads).
    To(Bind),
    /// Through a fused epilogue, into the result.
    Epilogue(&'a Epilogue<'a>),
}

/// The tiled GEMM over `z` batches of an M×K by K×N product; `fns` defines
/// `load_a`, `load_b` and `store`.
pub(crate) fn gemm_dispatch(
    sh: Shader,
    z: usize,
    mm: usize,
    nn: usize,
    kk: usize,
) -> Result<Dispatch, String> {
    let gx = nn.div_ceil(BN) as u64;
    let gy = mm.div_ceil(BM) as u64;
    if gx > MAX_GROUPS || gy > MAX_GROUPS || z as u64 > MAX_GROUPS {
        return Err(format!(
            "a {mm}x{nn} product in {z} batches is more tiles than a grid holds"
        ));
    }
    // The 4×4 register block unrolled into scalars: a private array
    // indexed in loops may live in memory (lavapipe's LLVM keeps it there;
    // so may a GPU driver), scalars stay in registers.
    let mut decl = String::new();
    let mut fmas = String::new();
    let mut stores = String::new();
    for i in 0..4 {
        let _ = writeln!(
            fmas,
            "      let a{i} = ta[k * {BM}u + lid.y + {}u]; let b{i} = tb[k * {BN}u + lid.x + {}u];",
            16 * i,
            16 * i
        );
    }
    for i in 0..4 {
        for j in 0..4 {
            let _ = write!(decl, "var c{i}{j} = 0.0; ");
            let _ = write!(fmas, "c{i}{j} = fma(a{i}, b{j}, c{i}{j}); ");
            let _ = writeln!(
                stores,
                "  if (m0 + lid.y + {mi}u < {mm}u && n0 + lid.x + {nj}u < {nn}u) {{ store(z, m0 + lid.y + {mi}u, n0 + lid.x + {nj}u, c{i}{j}); }}",
                mi = 16 * i,
                nj = 16 * j
            );
        }
        fmas.push('\n');
    }
    let entry = format!(
        "var<workgroup> ta: array<f32, {sa}>;\nvar<workgroup> tb: array<f32, {sb}>;\n\
@compute @workgroup_size(16, 16)\n\
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {{\n\
  let z = wid.z; let m0 = wid.y * {BM}u; let n0 = wid.x * {BN}u;\n\
  {decl}\n\
  for (var k0 = 0u; k0 < {kk}u; k0 = k0 + {BK}u) {{\n\
    for (var t = 0u; t < 4u; t = t + 1u) {{\n\
      let idx = li + t * 256u;\n\
      let am = idx / {BK}u; let ak = idx % {BK}u;\n\
      var av = 0.0;\n\
      if (m0 + am < {mm}u && k0 + ak < {kk}u) {{ av = load_a(z, m0 + am, k0 + ak); }}\n\
      ta[ak * {BM}u + am] = av;\n\
      let bk = idx / {BN}u; let bn = idx % {BN}u;\n\
      var bv = 0.0;\n\
      if (k0 + bk < {kk}u && n0 + bn < {nn}u) {{ bv = load_b(z, k0 + bk, n0 + bn); }}\n\
      tb[bk * {BN}u + bn] = bv;\n\
    }}\n\
    workgroupBarrier();\n\
    for (var k = 0u; k < {BK}u; k = k + 1u) {{\n{fmas}    }}\n\
    workgroupBarrier();\n\
  }}\n{stores}}}\n",
        sa = BM * BK,
        sb = BK * BN,
    );
    Ok(sh.finish_raw(&entry, [gx as u32, gy as u32, z as u32]))
}

/// Element offsets of each batch coordinate of an operand whose batch dims
/// `own` broadcast to `out` (right-aligned; 0 where broadcast), for a
/// matrix of `mat` elements.
fn batch_offset_expr(own: &[usize], out: &[usize], mat: usize) -> String {
    let off = out.len() - own.len();
    let mut stride = mat;
    let mut terms = vec![];
    let mut inner = 1usize;
    let mut dims: Vec<(usize, usize, usize)> = vec![]; // (out dim size, inner product, own stride)
    for d in (0..out.len()).rev() {
        let own_d = if d >= off { own[d - off] } else { 1 };
        let st = if own_d == out[d] && own_d != 1 {
            stride
        } else {
            0
        };
        dims.push((out[d], inner, st));
        inner *= out[d];
        stride *= own_d;
    }
    for (size, inner, st) in dims {
        if st != 0 {
            terms.push(format!("((z / {inner}u) % {size}u) * {st}u"));
        }
    }
    if terms.is_empty() {
        "0u".into()
    } else {
        terms.join(" + ")
    }
}

/// MatMul: `a` [.., M, K] × `b` [.., K, N] with numpy broadcasting of the
/// batch dims (1-D operands promoted as numpy does).
pub fn matmul(
    n: &Node,
    a_shape: &[usize],
    b_shape: &[usize],
    out_shape: &[usize],
    binds: [Bind; 2],
    store: Store,
) -> Result<GpuKernel, String> {
    let mut load_b = |sh: &mut Shader, i: &str| -> Result<String, String> {
        let b = sh.bind(binds[1], "f32");
        Ok(format!("{b}[{i}]"))
    };
    matmul_with(n, a_shape, b_shape, out_shape, binds[0], &mut load_b, store)
}

/// The read of element `i` (a `u32` expression, row-major over B's shape)
/// of a matmul's right operand, as an f32 expression; it may bind what it
/// reads.
pub(crate) type LoadB<'a> = dyn FnMut(&mut Shader, &str) -> Result<String, String> + 'a;

/// [`matmul`] with the right operand read by `load_b` (weights kept
/// quantized, dequantized as the tile is loaded).
pub(crate) fn matmul_with(
    n: &Node,
    a_shape: &[usize],
    b_shape: &[usize],
    out_shape: &[usize],
    a_bind: Bind,
    load_b: &mut LoadB,
    store: Store,
) -> Result<GpuKernel, String> {
    if a_shape.is_empty() || b_shape.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    let (m, k) = if a_shape.len() == 1 {
        (1, a_shape[0])
    } else {
        (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1])
    };
    let (k2, nn) = if b_shape.len() == 1 {
        (b_shape[0], 1)
    } else {
        (b_shape[b_shape.len() - 2], b_shape[b_shape.len() - 1])
    };
    if k != k2 {
        return Err(format!("MatMul of {a_shape:?} and {b_shape:?}"));
    }
    let ab = &a_shape[..a_shape.len().saturating_sub(2)];
    let bb = &b_shape[..b_shape.len().saturating_sub(2)];
    let out_batch_len = ab.len().max(bb.len());
    let mut out_batch = vec![1usize; out_batch_len];
    for d in 0..out_batch_len {
        let x = if d + ab.len() >= out_batch_len {
            ab[d + ab.len() - out_batch_len]
        } else {
            1
        };
        let y = if d + bb.len() >= out_batch_len {
            bb[d + bb.len() - out_batch_len]
        } else {
            1
        };
        out_batch[d] = x.max(y);
    }
    let z: usize = out_batch.iter().product();
    if z * m * nn != out_shape.iter().product::<usize>() {
        return Err(format!("MatMul result {out_shape:?}"));
    }
    let mut sh = Shader::new(n);
    let mut data = vec![];
    let a = sh.bind(a_bind, "f32");
    let bo = batch_offset_expr(bb, &out_batch, k * nn);
    let b = load_b(&mut sh, &format!("({bo} + k * {nn}u + n)"))?;
    let (store, what) = finish_store(&mut sh, store, out_shape, &mut data)?;
    let _ = write!(
        sh.fns,
        "fn load_a(z: u32, m: u32, k: u32) -> f32 {{ return {a}[{ao} + m * {k}u + k]; }}\n\
         fn load_b(z: u32, k: u32, n: u32) -> f32 {{ return {b}; }}\n\
         fn store(z: u32, m: u32, n: u32, v: f32) {{ let e = (z * {m}u + m) * {nn}u + n; {store} }}\n",
        ao = batch_offset_expr(ab, &out_batch, m * k),
    );
    let d = gemm_dispatch(sh, z, m, nn, k)?;
    Ok(GpuKernel {
        dispatches: vec![d],
        data,
        scratch: vec![],
        check: None,
        describe: join_what(
            format!(
                "matmul {m}x{k}x{nn}{}",
                if z > 1 {
                    format!(" x{z}")
                } else {
                    String::new()
                }
            ),
            &what,
        ),
        flops: 2.0 * (z * m * nn * k) as f64,
    })
}

fn join_what(a: String, epi: &str) -> String {
    if epi.is_empty() {
        a
    } else {
        format!("{a} + {epi}")
    }
}

/// Gemm: alpha·A'·B' + beta·C (C broadcast to [M, N]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    n: &Node,
    a_shape: &[usize],
    b_shape: &[usize],
    c_shape: Option<&[usize]>,
    binds: [Option<Bind>; 3],
    trans: (bool, bool),
    alpha: f32,
    beta: f32,
    store: Store,
) -> Result<GpuKernel, String> {
    if a_shape.len() != 2 || b_shape.len() != 2 {
        return Err("Gemm of operands that are not matrices".into());
    }
    let (m, k) = if trans.0 {
        (a_shape[1], a_shape[0])
    } else {
        (a_shape[0], a_shape[1])
    };
    let (k2, nn) = if trans.1 {
        (b_shape[1], b_shape[0])
    } else {
        (b_shape[0], b_shape[1])
    };
    if k != k2 {
        return Err(format!("Gemm of {a_shape:?} and {b_shape:?}"));
    }
    let mut sh = Shader::new(n);
    let mut data = vec![];
    let a = sh.bind(binds[0].ok_or("Gemm without A")?, "f32");
    let b = sh.bind(binds[1].ok_or("Gemm without B")?, "f32");
    let (store, what) = finish_store(&mut sh, store, &[m, nn], &mut data)?;
    let a_at = if trans.0 {
        format!("k * {m}u + m")
    } else {
        format!("m * {k}u + k")
    };
    let b_at = if trans.1 {
        format!("n * {k}u + k")
    } else {
        format!("k * {nn}u + n")
    };
    let c_term = match (binds[2], c_shape) {
        (Some(cb), Some(cs)) if beta != 0.0 => {
            let c = sh.bind(cb, "f32");
            let cs2: Vec<usize> = std::iter::repeat_n(1, 2usize.saturating_sub(cs.len()))
                .chain(cs.iter().copied())
                .collect();
            if cs2.len() != 2 || (cs2[0] != 1 && cs2[0] != m) || (cs2[1] != 1 && cs2[1] != nn) {
                return Err(format!("Gemm C of shape {cs:?}"));
            }
            let row = if cs2[0] == 1 {
                "0u".to_string()
            } else {
                format!("m * {}u", cs2[1])
            };
            let col = if cs2[1] == 1 { "0u" } else { "n" };
            format!(" + {} * {c}[{row} + {col}]", lit(beta))
        }
        _ => String::new(),
    };
    let _ = write!(
        sh.fns,
        "fn load_a(z: u32, m: u32, k: u32) -> f32 {{ return {a}[{a_at}]; }}\n\
         fn load_b(z: u32, k: u32, n: u32) -> f32 {{ return {b}[{b_at}]; }}\n\
         fn store(z: u32, m: u32, n: u32, acc: f32) {{ let e = m * {nn}u + n; let v = {} * acc{c_term}; {store} }}\n",
        lit(alpha)
    );
    let d = gemm_dispatch(sh, 1, m, nn, k)?;
    Ok(GpuKernel {
        dispatches: vec![d],
        data,
        scratch: vec![],
        check: None,
        describe: join_what(format!("gemm {m}x{k}x{nn}"), &what),
        flops: 2.0 * (m * nn * k) as f64,
    })
}

/// A convolution's geometry: shapes, explicit pads (begins then ends),
/// strides, dilations, groups.
#[derive(Clone, Debug)]
pub struct ConvGeom {
    pub x: Vec<usize>,
    pub w: Vec<usize>,
    pub y: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub group: usize,
}

/// Conv (and kiln.FusedConv): bias `B`, residual `Z` added before the
/// activation, `relu`, then any fused epilogue. `binds`: X, W, B, Z.
pub fn conv(
    n: &Node,
    g: &ConvGeom,
    binds: [Option<Bind>; 4],
    relu: bool,
    store: Store,
) -> Result<GpuKernel, String> {
    let r =
        g.x.len()
            .checked_sub(2)
            .filter(|&r| r >= 1)
            .ok_or("conv needs spatial dims")?;
    if g.w.len() != r + 2
        || g.y.len() != r + 2
        || g.strides.len() != r
        || g.dilations.len() != r
        || g.pads.len() != 2 * r
    {
        return Err("conv geometry of mixed ranks".into());
    }
    let (nb, c) = (g.x[0], g.x[1]);
    let m_all = g.w[0];
    let grp = g.group.max(1);
    if !c.is_multiple_of(grp) || !m_all.is_multiple_of(grp) || g.w[1] * grp != c {
        return Err(format!(
            "conv of {c} channels in {grp} groups with weights {:?}",
            g.w
        ));
    }
    let (cg, mg) = (c / grp, m_all / grp);
    let ksp: usize = g.w[2..].iter().product();
    let osp: usize = g.y[2..].iter().product();
    let isp: usize = g.x[2..].iter().product();
    let kk = cg * ksp;
    let mut sh = Shader::new(n);
    let mut data = vec![];
    let x = sh.bind(binds[0].ok_or("conv without X")?, "f32");
    let w = sh.bind(binds[1].ok_or("conv without W")?, "f32");
    let (store, what) = finish_store(&mut sh, store, &g.y, &mut data)?;
    let mut extra = String::new();
    if let Some(b) = binds[2] {
        let b = sh.bind(b, "f32");
        let _ = write!(extra, "v = v + {b}[oc];");
    }
    if let Some(zb) = binds[3] {
        let zz = sh.bind(zb, "f32");
        let _ = write!(extra, "v = v + {zz}[e];");
    }
    if relu {
        extra.push_str("v = select(v, 0.0, v < 0.0);");
    }
    // The input element under kernel tap `kt` of output position `op`
    // (flat spatial indices), or 0 in the padding.
    let (tap, inside, at) = window_tap(
        &g.x[2..],
        &g.y[2..],
        &g.w[2..],
        &g.strides,
        &g.dilations,
        &g.pads,
    );
    // A pointwise conv (1×1, stride 1, no pads) reads its input plane
    // straight: no per-tap index arithmetic in the GEMM's inner loads.
    let pointwise = ksp == 1
        && g.strides.iter().all(|&s| s == 1)
        && g.pads.iter().all(|&p| p == 0)
        && osp == isp;
    if pointwise {
        let _ = writeln!(
            sh.fns,
            "fn tap(base: u32, op: u32, kt: u32) -> f32 {{ return {x}[base + op]; }}"
        );
    } else {
        let _ = writeln!(
            sh.fns,
            "fn tap(base: u32, op: u32, kt: u32) -> f32 {{\n{tap}if ({inside}) {{ return {x}[base + {at}]; }}\nreturn 0.0;\n}}"
        );
    }
    let flops = 2.0 * (nb * m_all * osp * kk) as f64;
    let describe = join_what(
        format!(
            "conv {:?} {c}→{m_all} ch{}{}{}",
            &g.w[2..],
            if grp > 1 {
                format!(" /{grp}")
            } else {
                String::new()
            },
            if binds[3].is_some() {
                " + residual"
            } else {
                ""
            },
            if relu { " + Relu" } else { "" }
        ),
        &what,
    );
    if mg < 8 {
        // Depthwise (and other thin groups): one thread per output.
        let total = nb * m_all * osp;
        let body = format!(
            "if (gid >= {total}u) {{ return; }}\nlet e = gid;\nlet op = e % {osp}u; let oc = (e / {osp}u) % {m_all}u; let nb = e / ({osp}u * {m_all}u);\n\
             let gi = oc / {mg}u;\nvar v = 0.0;\n\
             for (var c = 0u; c < {cg}u; c = c + 1u) {{\n  let base = (nb * {c}u + gi * {cg}u + c) * {isp}u;\n  let wb = (oc * {cg}u + c) * {ksp}u;\n\
               for (var kt = 0u; kt < {ksp}u; kt = kt + 1u) {{ v = fma({w}[wb + kt], tap(base, op, kt), v); }}\n}}\n\
             {extra}\n{store}"
        );
        let d = sh.finish(WG, &body, grid_for(total as u64)?);
        return Ok(GpuKernel {
            dispatches: vec![d],
            data,
            scratch: vec![],
            check: None,
            describe,
            flops,
        });
    }
    // Implicit GEMM per group z: A = W[z], B = patches (K = cg·taps, N =
    // batch × output positions).
    let _ = write!(
        sh.fns,
        "fn load_a(z: u32, m: u32, k: u32) -> f32 {{ return {w}[(z * {mg}u + m) * {kk}u + k]; }}\n\
         fn load_b(z: u32, k: u32, n: u32) -> f32 {{ let c = k / {ksp}u; let kt = k % {ksp}u; let nb = n / {osp}u; let op = n % {osp}u;\n\
           return tap((nb * {c}u + z * {cg}u + c) * {isp}u, op, kt); }}\n\
         fn store(z: u32, m: u32, n: u32, acc: f32) {{ let oc = z * {mg}u + m; let nb = n / {osp}u; let op = n % {osp}u;\n\
           let e = (nb * {m_all}u + oc) * {osp}u + op; var v = acc; {extra} {store} }}\n"
    );
    let d = gemm_dispatch(sh, grp, mg, nb * osp, kk)?;
    Ok(GpuKernel {
        dispatches: vec![d],
        data,
        scratch: vec![],
        check: None,
        describe,
        flops,
    })
}

/// The input position under tap `kt` of a window at output position `op`
/// (both flat over the spatial dims, WGSL `u32`s in scope): statements
/// computing each dim's coordinate `i{d}`, the condition that it is
/// inside the input (not padding), and its flat offset.
pub(crate) fn window_tap(
    x: &[usize],
    y: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
) -> (String, String, String) {
    let mut tap = String::new();
    let mut o_rem = "op".to_string();
    let mut k_rem = "kt".to_string();
    let mut at = vec![];
    let mut stride = 1usize;
    let mut inside = vec![];
    for d in (0..x.len()).rev() {
        let _ = writeln!(
            tap,
            "let i{d} = i32({o_rem} % {}u) * {} - {} + i32({k_rem} % {}u) * {};",
            y[d], strides[d], pads[d], kernel[d], dilations[d]
        );
        o_rem = format!("({o_rem} / {}u)", y[d]);
        k_rem = format!("({k_rem} / {}u)", kernel[d]);
        inside.push(format!("i{d} >= 0 && i{d} < {}", x[d]));
        at.push(format!("u32(i{d}) * {stride}u"));
        stride *= x[d];
    }
    (tap, inside.join(" && "), at.join(" + "))
}

/// A pooling window over `x` [N, C, spatial...] into `y`: the flat
/// output, input and window sizes per plane, the output element count,
/// and [`window_tap`]'s statements for tap `kt` of output position `op`.
pub(crate) struct PoolWindow {
    pub osp: usize,
    pub isp: usize,
    pub ksp: usize,
    pub total: usize,
    pub tap: String,
    pub inside: String,
    pub at: String,
}

/// The window of a pool of `kernel` (`pads`: begins then ends), its
/// geometry checked.
pub(crate) fn pool_window(
    x: &[usize],
    y: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
) -> Result<PoolWindow, String> {
    let r = x
        .len()
        .checked_sub(2)
        .filter(|&r| r >= 1)
        .ok_or("pool needs spatial dims")?;
    if y.len() != r + 2
        || kernel.len() != r
        || strides.len() != r
        || dilations.len() != r
        || pads.len() != 2 * r
    {
        return Err("pool geometry of mixed ranks".into());
    }
    let osp: usize = y[2..].iter().product();
    let (tap, inside, at) = window_tap(&x[2..], &y[2..], kernel, strides, dilations, pads);
    Ok(PoolWindow {
        osp,
        isp: x[2..].iter().product(),
        ksp: kernel.iter().product(),
        total: x[0] * x[1] * osp,
        tap,
        inside,
        at,
    })
}

/// What a pooling window computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolOp {
    Max,
    /// Average, dividing by the window size (padding included) or by the
    /// taps inside the input.
    Average {
        count_include_pad: bool,
    },
    /// LpPool: (Σ |x|^p)^(1/p), padding contributing zeros.
    Lp(f32),
}

/// MaxPool/AveragePool over N-d windows (Global pools are windows of the
/// whole map). A window of padding only is NaN for Max (as the
/// interpreter: no value is larger than another there), and a NaN in a
/// window wins.
#[allow(clippy::too_many_arguments)]
pub fn pool(
    n: &Node,
    op: PoolOp,
    x: &[usize],
    y: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
) -> Result<GpuKernel, String> {
    let PoolWindow {
        osp,
        isp,
        ksp,
        total,
        tap,
        inside,
        at,
    } = pool_window(x, y, kernel, strides, dilations, pads)?;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let (init, acc, fin) = match op {
        PoolOp::Lp(p) => (
            "0.0".to_string(),
            format!("a = a + pow(abs(v), {});", lit(p)),
            format!("pow(a, {})", lit(1.0 / p)),
        ),
        PoolOp::Max => (
            lit(f32::NEG_INFINITY),
            "if (knan(v) || knan(a)) { a = a + v; } else { a = max(a, v); }".to_string(),
            format!("select(a, {}, cnt == 0u)", lit(f32::NAN)),
        ),
        PoolOp::Average { count_include_pad } => (
            "0.0".into(),
            "a = a + v;".into(),
            if count_include_pad {
                format!("a / {}", lit(ksp as f32))
            } else {
                "a / f32(cnt)".into()
            },
        ),
    };
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet op = gid % {osp}u; let base = (gid / {osp}u) * {isp}u;\n\
         var a = {init}; var cnt = 0u;\n\
         for (var kt = 0u; kt < {ksp}u; kt = kt + 1u) {{\n{tap}if ({inside}) {{ let v = {xb}[base + {at}]; cnt = cnt + 1u; {acc} }}\n}}\n\
         {yb}[gid] = {fin};"
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(d, format!("{} {kernel:?}", n.op), 0.0))
}

/// ConvTranspose, one thread per output element gathering the input
/// elements whose scattered taps land on it: input position
/// `i = (o + pad − k·dilation) / stride` where that divides exactly.
/// `x` [N, C, in...], `w` [C, M/group, k...], `y` [N, M, out...].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose(
    n: &Node,
    x: &[usize],
    w: &[usize],
    y: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pad_begin: &[i64],
    group: usize,
    bias: bool,
) -> Result<GpuKernel, String> {
    let r = x
        .len()
        .checked_sub(2)
        .filter(|&r| r >= 1)
        .ok_or("needs spatial dims")?;
    if w.len() != r + 2
        || y.len() != r + 2
        || strides.len() != r
        || dilations.len() != r
        || pad_begin.len() != r
    {
        return Err("geometry of mixed ranks".into());
    }
    let (nb, c) = (x[0], x[1]);
    let grp = group.max(1);
    if w[0] != c || !c.is_multiple_of(grp) {
        return Err(format!("weights {w:?} for {c} channels in {grp} groups"));
    }
    let (cg, mg) = (c / grp, w[1]);
    let m_all = mg * grp;
    if y[1] != m_all || y[0] != nb {
        return Err(format!("result {y:?}"));
    }
    let ksp: usize = w[2..].iter().product();
    let osp: usize = y[2..].iter().product();
    let isp: usize = x[2..].iter().product();
    let total = nb * m_all * osp;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let wb = sh.bind(Bind::Operand(1), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let b = if bias {
        format!("{}[oc]", sh.bind(Bind::Operand(2), "f32"))
    } else {
        "0.0".into()
    };
    let mut tap = String::new();
    let mut o_rem = "op".to_string();
    let mut k_rem = "kt".to_string();
    let mut inside = vec![];
    let mut at = vec![];
    let mut stride = 1usize;
    for d in (0..r).rev() {
        let _ =
            writeln!(
            tap,
            "let q{d} = i32({o_rem} % {}u) + {} - i32({k_rem} % {}u) * {};\nlet i{d} = q{d} / {};",
            y[2 + d], pad_begin[d], w[2 + d], dilations[d], strides[d]
        );
        o_rem = format!("({o_rem} / {}u)", y[2 + d]);
        k_rem = format!("({k_rem} / {}u)", w[2 + d]);
        inside.push(format!(
            "q{d} >= 0 && q{d} % {} == 0 && i{d} < {}",
            strides[d],
            x[2 + d]
        ));
        at.push(format!("u32(i{d}) * {stride}u"));
        stride *= x[2 + d];
    }
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet op = gid % {osp}u; let oc = (gid / {osp}u) % {m_all}u; let nb = gid / ({osp}u * {m_all}u);\n\
         let g = oc / {mg}u; let mo = oc % {mg}u;\nvar v = {b};\n\
         for (var kt = 0u; kt < {ksp}u; kt = kt + 1u) {{\n{tap}if ({inside}) {{\n  let ip = {at};\n\
           for (var ci = 0u; ci < {cg}u; ci = ci + 1u) {{ let ic = g * {cg}u + ci; v = fma({xb}[(nb * {c}u + ic) * {isp}u + ip], {wb}[(ic * {mg}u + mo) * {ksp}u + kt], v); }}\n}}\n}}\n\
         {yb}[gid] = v;",
        inside = inside.join(" && "),
        at = at.join(" + ")
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("conv transpose {:?} {c}→{m_all} ch", &w[2..]),
        2.0 * (nb * c * mg * isp * ksp) as f64,
    ))
}

/// DeformConv (2-D), one thread per output element: each tap samples its
/// input channel bilinearly at the window position plus the learned
/// offset (corners outside the image read 0), times the mask where there
/// is one, as the interpreter. `x` [N, C, H, W], `w` [M, C/group, kH, kW],
/// offsets [N, og·2·kH·kW, oH, oW], mask [N, og·kH·kW, oH, oW].
#[allow(clippy::too_many_arguments)]
pub fn deform_conv(
    n: &Node,
    x: &[usize],
    w: &[usize],
    out: (usize, usize),
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 2],
    group: usize,
    offset_group: usize,
    bias: bool,
    mask: bool,
) -> Result<GpuKernel, String> {
    let (nb, c, ih, iw) = (x[0], x[1], x[2], x[3]);
    let (m, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
    let (group, og) = (group.max(1), offset_group.max(1));
    if cg * group != c || !m.is_multiple_of(group) || !c.is_multiple_of(og) {
        return Err("DeformConv channels do not fit".into());
    }
    let (oh, ow) = out;
    let (mg, cpo, kn, pn) = (m / group, c / og, kh * kw, oh * ow);
    let total = nb * m * pn;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let wb = sh.bind(Bind::Operand(1), "f32");
    let ob = sh.bind(Bind::Operand(2), "f32");
    let b = if bias {
        format!("{}[oc]", sh.bind(Bind::Operand(3), "f32"))
    } else {
        "0.0".into()
    };
    let mk = if mask {
        format!(
            " * {}[((nb * {og}u + gi) * {kn}u + kk) * {pn}u + p]",
            sh.bind(Bind::Operand(4), "f32")
        )
    } else {
        String::new()
    };
    let yb = sh.bind(Bind::Result(0), "f32");
    let _ = write!(
        sh.fns,
        "fn sample(base: u32, y: f32, xx: f32) -> f32 {{\n\
           let y0 = floor(y); let x0 = floor(xx); let dy = y - y0; let dx = xx - x0;\n\
           var s = 0.0;\n\
           for (var a = 0; a < 2; a = a + 1) {{ for (var bb = 0; bb < 2; bb = bb + 1) {{\n\
             let yy = y0 + f32(a); let xc = x0 + f32(bb);\n\
             let wy = select(1.0 - dy, dy, a == 1); let wx = select(1.0 - dx, dx, bb == 1);\n\
             if (yy >= 0.0 && yy < {ih}.0 && xc >= 0.0 && xc < {iw}.0 && wy * wx != 0.0) {{ s = s + wy * wx * {xb}[base + u32(yy) * {iw}u + u32(xc)]; }}\n\
           }} }}\n\
           return s;\n}}\n"
    );
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet p = gid % {pn}u; let oc = (gid / {pn}u) % {m}u; let nb = gid / ({pn}u * {m}u);\n\
         let i = p / {ow}u; let j = p % {ow}u; let g = oc / {mg}u;\nvar v = {b};\n\
         for (var cl = 0u; cl < {cg}u; cl = cl + 1u) {{\n  let ci = g * {cg}u + cl; let gi = ci / {cpo}u; let base = (nb * {c}u + ci) * {ih}u * {iw}u;\n\
           for (var kk = 0u; kk < {kn}u; kk = kk + 1u) {{\n    let ki = kk / {kw}u; let kj = kk % {kw}u;\n\
             let oo = ((nb * {og}u + gi) * 2u * {kn}u + 2u * kk) * {pn}u + p;\n\
             let y = f32(i * {s0}u) - {p0}.0 + f32(ki * {d0}u) + {ob}[oo];\n\
             let xx = f32(j * {s1}u) - {p1}.0 + f32(kj * {d1}u) + {ob}[oo + {pn}u];\n\
             v = v + {wb}[(oc * {cg}u + cl) * {kn}u + kk] * sample(base, y, xx){mk};\n  }}\n}}\n{yb}[gid] = v;",
        s0 = strides[0],
        s1 = strides[1],
        d0 = dilations[0],
        d1 = dilations[1],
        p0 = pads[0],
        p1 = pads[1]
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("deform conv [{kh}, {kw}] {c}→{m} ch"),
        2.0 * (nb * m * pn * cg * kn) as f64,
    ))
}
