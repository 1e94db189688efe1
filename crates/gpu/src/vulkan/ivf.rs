//! The device side of IVF-Flat search (see `crate::ivf`): resident buffers and the three-dispatch
//! submission per batch of queries. The members' vectors are one transposed chunk (`dim` rows of all
//! members, list after list), the layout of `distances.comp` candidates, so that a search of every list
//! runs as tiled distances and the device top-k over them (`Context::top_k`) with no second copy.

use vulkano::buffer::{BufferUsage, Subbuffer};
use vulkano::command_buffer::CopyBufferInfo;
use vulkano::descriptor_set::WriteDescriptorSet;

use super::{Chunk, Context, cs, vk};
use crate::{Direction, Error, IvfLists, Result};

/// Inverted lists in device-local memory.
#[derive(Debug)]
pub(crate) struct IvfBuffers {
    /// The centroids, transposed, as one chunk of `distances.comp` candidates.
    centroids: Chunk,
    /// Every list's members, transposed as one chunk (see `ivf.comp`).
    vectors: Chunk,
    offsets: Subbuffer<[u32]>,
    dim: usize,
    n_lists: usize,
}

impl Context {
    /// A device-local copy of `data`, through a staging buffer.
    fn resident<T: vulkano::buffer::BufferContents + Copy>(&self, data: &[T]) -> Result<Subbuffer<[T]>> {
        let staging = self.input(data, BufferUsage::TRANSFER_SRC)?;
        let buf = self.scratch::<T>(data.len(), BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST)?;
        self.submit(|b, _| {
            b.copy_buffer(CopyBufferInfo::buffers(staging.clone(), buf.clone())).map_err(vk("recording an upload"))?;
            Ok(())
        })?;
        Ok(buf)
    }

    pub(crate) fn ivf_upload(&self, lists: &IvfLists<'_>, n_lists: usize) -> Result<IvfBuffers> {
        let dim = lists.dim;
        let too_big = |what: &'static str, bytes: usize| Error::Invalid {
            what,
            reason: format!("{bytes} bytes exceed one device buffer ({} bytes)", self.max_bytes),
        };
        if (lists.vectors.len() * 4) as u64 > self.max_bytes {
            return Err(too_big("ivf vectors", lists.vectors.len() * 4));
        }
        let one = |mut chunks: Vec<Chunk>, what, bytes| {
            if chunks.len() == 1 { Ok(chunks.remove(0)) } else { Err(too_big(what, bytes)) }
        };
        let centroids = one(self.upload(lists.centroids, dim)?, "ivf centroids", lists.centroids.len() * 4)?;
        let vectors = one(self.upload(lists.vectors, dim)?, "ivf vectors", lists.vectors.len() * 4)?;
        Ok(IvfBuffers { centroids, vectors, offsets: self.resident(lists.offsets)?, dim, n_lists })
    }

    pub(crate) fn ivf_search(
        &self,
        queries: &[f32],
        b: usize,
        bufs: &IvfBuffers,
        l2: bool,
        nprobe: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let (dim, n_lists) = (bufs.dim, bufs.n_lists);
        if nprobe == n_lists {
            // Every list: the tiled distances over all members and the device top-k (row = index).
            let dir = if l2 { Direction::Lower } else { Direction::Higher };
            return self.top_k(queries, b, std::slice::from_ref(&bufs.vectors), dim, dir, k);
        }
        // Queries per submission: the probe scores (queries x lists) must fit one buffer, and one
        // workgroup per query must fit the dispatch's x count (at least 65,535 on every device).
        let per = ((self.max_bytes / 4) as usize / n_lists).clamp(1, 65_535);
        let mut out = Vec::with_capacity(b);
        for q0 in (0..b).step_by(per) {
            let nq = per.min(b - q0);
            let staging = self.input(&queries[q0 * dim..(q0 + nq) * dim], BufferUsage::TRANSFER_SRC)?;
            let qbuf = self.scratch::<f32>(nq * dim, BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST)?;
            let sbuf = self.scratch::<f32>(nq * n_lists, BufferUsage::STORAGE_BUFFER)?;
            let probes = self.scratch::<u32>(nq * nprobe, BufferUsage::STORAGE_BUFFER)?;
            let ids = self.output::<u32>(nq * k)?;
            let tops = self.output::<f32>(nq * k)?;
            let metric = u32::from(l2);
            // One submission: the copy and the three dispatches are ordered by the barriers the command
            // buffer inserts; nothing but k ids and scores per query is read back.
            self.submit(|bld, ctx| {
                bld.copy_buffer(CopyBufferInfo::buffers(staging.clone(), qbuf.clone()))
                    .map_err(vk("recording a query upload"))?;
                ctx.record_distances(bld, &qbuf, &bufs.centroids, &sbuf, nq, dim, l2)?;
                let sel = cs::SelectParams { n_lists: n_lists as u32, nprobe: nprobe as u32, metric };
                let writes =
                    vec![WriteDescriptorSet::buffer(0, sbuf.clone()), WriteDescriptorSet::buffer(1, probes.clone())];
                ctx.dispatch(bld, &ctx.pipes.select, writes, sel, [nq as u32, 1, 1])?;
                let pc = cs::IvfParams {
                    dim: dim as u32,
                    nprobe: nprobe as u32,
                    k: k as u32,
                    metric,
                    rows: bufs.vectors.rows as u32,
                };
                let writes = vec![
                    WriteDescriptorSet::buffer(0, qbuf.clone()),
                    WriteDescriptorSet::buffer(1, bufs.vectors.buf.clone()),
                    WriteDescriptorSet::buffer(2, bufs.offsets.clone()),
                    WriteDescriptorSet::buffer(3, probes.clone()),
                    WriteDescriptorSet::buffer(4, ids.clone()),
                    WriteDescriptorSet::buffer(5, tops.clone()),
                ];
                ctx.dispatch(bld, &ctx.pipes.ivf, writes, pc, [nq as u32, 1, 1])
            })?;
            let (ids, tops) = (ids.read().map_err(vk("reading ids"))?, tops.read().map_err(vk("reading scores"))?);
            for q in 0..nq {
                out.push(
                    (0..k).filter(|&r| ids[q * k + r] != u32::MAX).map(|r| (ids[q * k + r], tops[q * k + r])).collect(),
                );
            }
        }
        Ok(out)
    }
}
