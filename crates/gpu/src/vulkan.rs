//! The Vulkan backend: device choice, allocators, the compute pipelines, chunked buffers, and
//! submission with a fence.

use std::sync::Arc;

use vulkano::buffer::{Buffer, BufferContents, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::device::{Device, DeviceCreateInfo, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{ComputePipeline, Pipeline, PipelineBindPoint, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::sync::{self, GpuFuture};
use vulkano::{Validated, VulkanLibrary};

use crate::{Candidates, Direction, Error, MAX_K, Result, SqCodes, cpu};

mod ivf;
pub(crate) use ivf::IvfBuffers;

mod cs {
    vulkano_shaders::shader! {
        shaders: {
            distances: { ty: "compute", path: "shaders/distances.comp" },
            topk: { ty: "compute", path: "shaders/topk.comp" },
            codes: { ty: "compute", path: "shaders/codes.comp" },
            langevin: { ty: "compute", path: "shaders/langevin.comp" },
            select: { ty: "compute", path: "shaders/select.comp" },
            ivf: { ty: "compute", path: "shaders/ivf.comp" },
        }
    }
}

/// Queries scored per workgroup row of the distances shader.
const QUERY_BLOCK: usize = 8;

fn vk<E: std::fmt::Display>(during: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Vulkan { during, reason: e.to_string() }
}

/// Rows `first..first + rows` of the candidates, transposed (`dim` rows of `rows`), on the device.
#[derive(Debug)]
pub(crate) struct Chunk {
    first: usize,
    rows: usize,
    buf: Subbuffer<[f32]>,
}

#[derive(Debug)]
struct Pipelines {
    distances: Arc<ComputePipeline>,
    topk: Arc<ComputePipeline>,
    codes: Arc<ComputePipeline>,
    langevin: Arc<ComputePipeline>,
    select: Arc<ComputePipeline>,
    ivf: Arc<ComputePipeline>,
}

/// A device with its queue, allocators and pipelines.
#[derive(Debug)]
pub(crate) struct Context {
    name: String,
    device: Arc<Device>,
    queue: Arc<Queue>,
    mem: Arc<StandardMemoryAllocator>,
    sets: Arc<StandardDescriptorSetAllocator>,
    cmds: Arc<StandardCommandBufferAllocator>,
    pipes: Pipelines,
    max_bytes: u64,
}

impl Context {
    pub(crate) fn new() -> Result<Context> {
        let no = |reason: String| Error::NoVulkan { reason };
        let library = VulkanLibrary::new().map_err(|e| no(format!("Vulkan library: {e}")))?;
        let instance = Instance::new(
            library,
            InstanceCreateInfo { flags: InstanceCreateFlags::ENUMERATE_PORTABILITY, ..Default::default() },
        )
        .map_err(|e| no(format!("instance: {e}")))?;
        let devices: Vec<_> = instance
            .enumerate_physical_devices()
            .map_err(|e| no(format!("devices: {e}")))?
            .filter_map(|pd| {
                let family =
                    pd.queue_family_properties().iter().position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE))?;
                Some((pd, family as u32))
            })
            .collect();
        let rank = |t: PhysicalDeviceType| match t {
            PhysicalDeviceType::DiscreteGpu => 0,
            PhysicalDeviceType::IntegratedGpu => 1,
            PhysicalDeviceType::VirtualGpu => 2,
            PhysicalDeviceType::Cpu => 3,
            _ => 4,
        };
        let chosen = match std::env::var("M2M_GPU_DEVICE").ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(i) => devices
                .get(i)
                .cloned()
                .ok_or_else(|| no(format!("M2M_GPU_DEVICE={i}: only {} devices", devices.len())))?,
            None => devices
                .iter()
                .min_by_key(|(pd, _)| rank(pd.properties().device_type))
                .cloned()
                .ok_or_else(|| no("no device with a compute queue (is a Vulkan driver installed?)".into()))?,
        };
        let (pd, family) = chosen;
        let name = pd.properties().device_name.clone();
        let max_bytes = u64::from(pd.properties().max_storage_buffer_range);
        let (device, mut queues) = Device::new(
            pd,
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo { queue_family_index: family, ..Default::default() }],
                ..Default::default()
            },
        )
        .map_err(|e| no(format!("device {name}: {e}")))?;
        let queue = queues.next().ok_or_else(|| no("no queue".into()))?;
        let pipeline =
            |module: std::result::Result<Arc<vulkano::shader::ShaderModule>, Validated<vulkano::VulkanError>>| {
                let entry = module.map_err(vk("loading a shader"))?.entry_point("main").ok_or_else(|| {
                    Error::Vulkan { during: "loading a shader", reason: "no entry point main".into() }
                })?;
                let stage = PipelineShaderStageCreateInfo::new(entry);
                let layout = PipelineLayout::new(
                    device.clone(),
                    PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
                        .into_pipeline_layout_create_info(device.clone())
                        .map_err(vk("creating a pipeline layout"))?,
                )
                .map_err(vk("creating a pipeline layout"))?;
                ComputePipeline::new(device.clone(), None, ComputePipelineCreateInfo::stage_layout(stage, layout))
                    .map_err(vk("creating a pipeline"))
            };
        let pipes = Pipelines {
            distances: pipeline(cs::load_distances(device.clone()))?,
            topk: pipeline(cs::load_topk(device.clone()))?,
            codes: pipeline(cs::load_codes(device.clone()))?,
            langevin: pipeline(cs::load_langevin(device.clone()))?,
            select: pipeline(cs::load_select(device.clone()))?,
            ivf: pipeline(cs::load_ivf(device.clone()))?,
        };
        Ok(Context {
            name,
            mem: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            sets: Arc::new(StandardDescriptorSetAllocator::new(device.clone(), Default::default())),
            cmds: Arc::new(StandardCommandBufferAllocator::new(device.clone(), Default::default())),
            device,
            queue,
            pipes,
            max_bytes,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn limit_buffer_bytes(&mut self, bytes: u64) {
        self.max_bytes = self.max_bytes.min(bytes.max(256));
    }

    /// A host-visible buffer holding `data` (inputs and staging).
    fn input<T: BufferContents + Copy>(&self, data: &[T], usage: BufferUsage) -> Result<Subbuffer<[T]>> {
        Buffer::from_iter(
            self.mem.clone(),
            BufferCreateInfo { usage, ..Default::default() },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
                ..Default::default()
            },
            data.iter().copied(),
        )
        .map_err(vk("allocating an input buffer"))
    }

    /// A host-readable buffer of `len` values (outputs of shaders and of copies).
    fn output<T: BufferContents>(&self, len: usize) -> Result<Subbuffer<[T]>> {
        Buffer::new_slice(
            self.mem.clone(),
            BufferCreateInfo { usage: BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST, ..Default::default() },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                ..Default::default()
            },
            len.max(1) as u64,
        )
        .map_err(vk("allocating an output buffer"))
    }

    /// A device-only buffer of `len` values.
    fn scratch<T: BufferContents>(&self, len: usize, usage: BufferUsage) -> Result<Subbuffer<[T]>> {
        Buffer::new_slice(
            self.mem.clone(),
            BufferCreateInfo { usage, ..Default::default() },
            AllocationCreateInfo { memory_type_filter: MemoryTypeFilter::PREFER_DEVICE, ..Default::default() },
            len.max(1) as u64,
        )
        .map_err(vk("allocating a device buffer"))
    }

    /// Records commands with `record`, submits them and waits on a fence.
    fn submit(
        &self,
        record: impl FnOnce(&mut AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>, &Context) -> Result<()>,
    ) -> Result<()> {
        let mut b = AutoCommandBufferBuilder::primary(
            self.cmds.clone(),
            self.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(vk("starting a command buffer"))?;
        record(&mut b, self)?;
        let cb = b.build().map_err(vk("building a command buffer"))?;
        sync::now(self.device.clone())
            .then_execute(self.queue.clone(), cb)
            .map_err(vk("submitting"))?
            .then_signal_fence_and_flush()
            .map_err(vk("flushing"))?
            .wait(None)
            .map_err(vk("waiting on the fence"))
    }

    /// Binds `pipe` with `buffers` at bindings 0.., pushes `pc` and dispatches `groups`.
    fn dispatch<Pc: BufferContents>(
        &self,
        b: &mut AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>,
        pipe: &Arc<ComputePipeline>,
        writes: Vec<WriteDescriptorSet>,
        pc: Pc,
        groups: [u32; 3],
    ) -> Result<()> {
        let layout = pipe.layout().clone();
        let set = DescriptorSet::new(self.sets.clone(), layout.set_layouts()[0].clone(), writes, [])
            .map_err(vk("creating a descriptor set"))?;
        b.bind_pipeline_compute(pipe.clone())
            .and_then(|b| b.bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set))
            .and_then(|b| b.push_constants(layout, 0, pc))
            .map_err(vk("recording a dispatch"))?;
        // SAFETY: every shader bounds its reads and writes by the lengths pushed with it, which match
        // the buffers bound here (checked by the callers), and none reads uninitialised memory.
        unsafe { b.dispatch(groups) }.map_err(vk("recording a dispatch"))?;
        Ok(())
    }

    /// Candidates per chunk: every chunk's transposed rows fit one buffer.
    fn chunk_rows(&self, dim: usize) -> usize {
        ((self.max_bytes / 4) as usize / dim).max(1)
    }

    pub(crate) fn upload(&self, rows: &[f32], dim: usize) -> Result<Vec<Chunk>> {
        let n = rows.len() / dim;
        let per = self.chunk_rows(dim);
        let mut chunks = Vec::new();
        let mut first = 0;
        while first < n {
            let len = per.min(n - first);
            let mut t = vec![0f32; len * dim];
            for r in 0..len {
                for k in 0..dim {
                    t[k * len + r] = rows[(first + r) * dim + k];
                }
            }
            let staging = self.input(&t, BufferUsage::TRANSFER_SRC)?;
            let buf = self.scratch::<f32>(t.len(), BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST)?;
            self.submit(|b, _| {
                b.copy_buffer(CopyBufferInfo::buffers(staging.clone(), buf.clone()))
                    .map_err(vk("recording an upload"))?;
                Ok(())
            })?;
            chunks.push(Chunk { first, rows: len, buf });
            first += len;
        }
        Ok(chunks)
    }

    /// Queries per dispatch against a chunk of `rows`: the score buffer must fit one buffer too.
    fn query_block(&self, rows: usize) -> usize {
        // At most 65,535 queries: the top-k dispatch has one workgroup per query along x.
        let fit = ((self.max_bytes / 4) as usize / rows.max(1)).clamp(1, 65_535);
        if fit >= QUERY_BLOCK { fit / QUERY_BLOCK * QUERY_BLOCK } else { fit }
    }

    pub(crate) fn scores(&self, queries: &[f32], chunks: &[Chunk], c: &Candidates, l2: bool) -> Result<Vec<f32>> {
        let dim = c.dim;
        let b = queries.len() / dim;
        let mut out = vec![0f32; b * c.rows];
        for ch in chunks {
            let qb = self.query_block(ch.rows);
            for q0 in (0..b).step_by(qb) {
                let nq = qb.min(b - q0);
                let qbuf = self.input(&queries[q0 * dim..(q0 + nq) * dim], BufferUsage::STORAGE_BUFFER)?;
                let sbuf = self.output::<f32>(nq * ch.rows)?;
                self.submit(|bld, ctx| ctx.record_distances(bld, &qbuf, ch, &sbuf, nq, dim, l2))?;
                let s = sbuf.read().map_err(vk("reading scores"))?;
                for q in 0..nq {
                    out[(q0 + q) * c.rows + ch.first..(q0 + q) * c.rows + ch.first + ch.rows]
                        .copy_from_slice(&s[q * ch.rows..(q + 1) * ch.rows]);
                }
            }
        }
        Ok(out)
    }

    /// Records the distances dispatch of the `nq` queries in `qbuf` against chunk `ch`, scores into `sbuf`.
    #[allow(clippy::too_many_arguments, reason = "the dispatch's buffers and shape")]
    fn record_distances(
        &self,
        bld: &mut AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>,
        qbuf: &Subbuffer<[f32]>,
        ch: &Chunk,
        sbuf: &Subbuffer<[f32]>,
        nq: usize,
        dim: usize,
        l2: bool,
    ) -> Result<()> {
        let pc =
            cs::DistParams { dim: dim as u32, n_queries: nq as u32, n_cand: ch.rows as u32, metric: u32::from(l2) };
        let writes = vec![
            WriteDescriptorSet::buffer(0, qbuf.clone()),
            WriteDescriptorSet::buffer(1, ch.buf.clone()),
            WriteDescriptorSet::buffer(2, sbuf.clone()),
        ];
        let groups = [ch.rows.div_ceil(64) as u32, nq.div_ceil(QUERY_BLOCK) as u32, 1];
        self.dispatch(bld, &self.pipes.distances, writes, pc, groups)
    }

    pub(crate) fn top_k(
        &self,
        queries: &[f32],
        b: usize,
        chunks: &[Chunk],
        dim: usize,
        dir: Direction,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        debug_assert!(k <= MAX_K);
        let l2 = dir == Direction::Lower;
        let mut best: Vec<Vec<(u32, f32)>> = vec![Vec::new(); b];
        for ch in chunks {
            let qb = self.query_block(ch.rows);
            for q0 in (0..b).step_by(qb) {
                let nq = qb.min(b - q0);
                // The queries go to device memory first: every workgroup of the distances dispatch reads
                // them, and reading them from host memory crosses the bus each time.
                let staging = self.input(&queries[q0 * dim..(q0 + nq) * dim], BufferUsage::TRANSFER_SRC)?;
                let qbuf = self.scratch::<f32>(nq * dim, BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST)?;
                let sbuf = self.scratch::<f32>(nq * ch.rows, BufferUsage::STORAGE_BUFFER)?;
                let ids = self.output::<u32>(nq * k)?;
                let tops = self.output::<f32>(nq * k)?;
                let sel = cs::TopkParams {
                    n_cand: ch.rows as u32,
                    k: k as u32,
                    metric: u32::from(l2),
                    id_offset: ch.first as u32,
                };
                // Scores stay on the device: both dispatches in one submission (the command buffer
                // inserts the barrier between them), and only k ids and scores per query come back.
                self.submit(|bld, ctx| {
                    bld.copy_buffer(CopyBufferInfo::buffers(staging.clone(), qbuf.clone()))
                        .map_err(vk("recording a query upload"))?;
                    ctx.record_distances(bld, &qbuf, ch, &sbuf, nq, dim, l2)?;
                    let writes = vec![
                        WriteDescriptorSet::buffer(0, sbuf.clone()),
                        WriteDescriptorSet::buffer(1, ids.clone()),
                        WriteDescriptorSet::buffer(2, tops.clone()),
                    ];
                    ctx.dispatch(bld, &ctx.pipes.topk, writes, sel, [nq as u32, 1, 1])
                })?;
                let (ids, tops) = (ids.read().map_err(vk("reading ids"))?, tops.read().map_err(vk("reading scores"))?);
                for q in 0..nq {
                    let found =
                        (0..k).filter(|&r| ids[q * k + r] != u32::MAX).map(|r| (ids[q * k + r], tops[q * k + r]));
                    best[q0 + q].extend(found);
                }
            }
        }
        // Merge the chunks' lists with the shader's order.
        for list in &mut best {
            list.sort_by(|a, b| {
                if cpu::better(dir, a.1, a.0, b.1, b.0) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
            list.truncate(k);
        }
        Ok(best)
    }

    pub(crate) fn code_scores(&self, query: &[f32], codes: &SqCodes<'_>) -> Result<Vec<f32>> {
        let (qstep, offset) = cpu::code_weights(query, codes);
        let words: Vec<u32> =
            codes.codes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let rows_per = ((self.max_bytes as usize) / codes.stride.max(4)).max(1);
        let mut out = Vec::with_capacity(codes.rows);
        let wq = self.input(&qstep, BufferUsage::STORAGE_BUFFER)?;
        for r0 in (0..codes.rows).step_by(rows_per) {
            let rows = rows_per.min(codes.rows - r0);
            let w0 = r0 * codes.stride / 4;
            let cbuf = self.input(&words[w0..w0 + rows * codes.stride / 4], BufferUsage::STORAGE_BUFFER)?;
            let est = self.output::<f32>(rows)?;
            let pc = cs::CodeParams { dim: codes.dim as u32, rows: rows as u32, stride: codes.stride as u32, offset };
            self.submit(|bld, ctx| {
                let writes = vec![
                    WriteDescriptorSet::buffer(0, cbuf.clone()),
                    WriteDescriptorSet::buffer(1, wq.clone()),
                    WriteDescriptorSet::buffer(2, est.clone()),
                ];
                ctx.dispatch(bld, &ctx.pipes.codes, writes, pc, [rows.div_ceil(64) as u32, 1, 1])
            })?;
            out.extend_from_slice(&est.read().map_err(vk("reading estimates"))?);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments, reason = "mirrors Compute::langevin_step")]
    pub(crate) fn langevin_step(
        &self,
        x: &mut [f32],
        dim: usize,
        mu: &[f32],
        kappa: &[f32],
        alpha: &[f32],
        xi: &[f32],
        dt: f32,
        noise_scale: f32,
    ) -> Result<()> {
        let chains = x.len() / dim;
        let ka: Vec<f32> = kappa.iter().zip(alpha).flat_map(|(k, a)| [*k, *a]).collect();
        let per = ((self.max_bytes / 4) as usize / dim).max(1);
        let mbuf = self.input(mu, BufferUsage::STORAGE_BUFFER)?;
        let kbuf = self.input(&ka, BufferUsage::STORAGE_BUFFER)?;
        for c0 in (0..chains).step_by(per) {
            let n = per.min(chains - c0);
            let range = c0 * dim..(c0 + n) * dim;
            let xbuf = Buffer::from_iter(
                self.mem.clone(),
                BufferCreateInfo { usage: BufferUsage::STORAGE_BUFFER, ..Default::default() },
                AllocationCreateInfo {
                    memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                    ..Default::default()
                },
                x[range.clone()].iter().copied(),
            )
            .map_err(vk("allocating the chains"))?;
            let nbuf = self.input(&xi[range.clone()], BufferUsage::STORAGE_BUFFER)?;
            let pc = cs::StepParams { dim: dim as u32, n_splats: kappa.len() as u32, dt, noise_scale };
            self.submit(|bld, ctx| {
                let writes = vec![
                    WriteDescriptorSet::buffer(0, xbuf.clone()),
                    WriteDescriptorSet::buffer(1, mbuf.clone()),
                    WriteDescriptorSet::buffer(2, kbuf.clone()),
                    WriteDescriptorSet::buffer(3, nbuf.clone()),
                ];
                ctx.dispatch(bld, &ctx.pipes.langevin, writes, pc, [n as u32, 1, 1])
            })?;
            x[range].copy_from_slice(&xbuf.read().map_err(vk("reading the chains"))?);
        }
        Ok(())
    }
}

/// Device-local storage of hot-tier blocks (m2m-tier's [`m2m_tier::HotStorage`]).
#[derive(Debug)]
pub struct DeviceStorage {
    pub(crate) ctx: Arc<Context>,
}

/// A block of bytes in device-local memory.
#[derive(Clone, Debug)]
pub struct DeviceBlock {
    buf: Subbuffer<[u8]>,
    len: usize,
}

impl DeviceBlock {
    /// Bytes stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device buffer, for kernels.
    pub fn buffer(&self) -> &Subbuffer<[u8]> {
        &self.buf
    }
}

impl DeviceStorage {
    /// Copies a block back to the host (for checks; kernels read it in place).
    pub fn read(&self, block: &DeviceBlock) -> Result<Vec<u8>> {
        let ctx = &self.ctx;
        let out = ctx.output::<u8>(block.len.max(1))?;
        let src = block.buf.clone();
        ctx.submit(|b, _| {
            b.copy_buffer(CopyBufferInfo::buffers(src.clone(), out.clone())).map_err(vk("recording a read-back"))?;
            Ok(())
        })?;
        let bytes = out.read().map_err(vk("reading a block"))?;
        Ok(bytes[..block.len].to_vec())
    }
}

impl m2m_tier::HotStorage for DeviceStorage {
    type Block = DeviceBlock;

    fn name(&self) -> &str {
        self.ctx.name()
    }

    fn store(&self, bytes: &[u8]) -> m2m_tier::Result<DeviceBlock> {
        let device = |e: Error| m2m_tier::Error::Device { reason: e.to_string() };
        let ctx = &self.ctx;
        let staging =
            ctx.input(if bytes.is_empty() { &[0u8] } else { bytes }, BufferUsage::TRANSFER_SRC).map_err(device)?;
        let buf = ctx
            .scratch::<u8>(
                bytes.len().max(1),
                BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
            )
            .map_err(device)?;
        ctx.submit(|b, _| {
            b.copy_buffer(CopyBufferInfo::buffers(staging.clone(), buf.clone())).map_err(vk("recording an upload"))?;
            Ok(())
        })
        .map_err(device)?;
        Ok(DeviceBlock { buf, len: bytes.len() })
    }

    fn bytes(block: &DeviceBlock) -> u64 {
        block.len as u64
    }
}
