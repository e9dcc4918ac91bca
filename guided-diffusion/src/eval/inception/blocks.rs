//! The mixed blocks of Inception-v3 with torchvision's layer names and channel counts, and
//! pytorch-fid's patches: `FIDInceptionA`/`C`/`E_1` average-pool without counting padding,
//! `FIDInceptionE_2` max-pools in its pool branch. `B` (Mixed_6a) and `D` (Mixed_7a) are the
//! plain torchvision reductions. Branch outputs are concatenated on channels in torchvision's
//! order, which is also the TensorFlow graph's.
use super::layers::{avg_pool_3x3_s1_p1_exclude_pad, max_pool_3x3_s1_p1, max_pool_3x3_s2, ConvBn};
use super::weights::WeightMap;
use crate::models::Exec;
use crate::Result;
use candle_core::{Device, Tensor};

struct Loader<'a> {
    w: &'a WeightMap,
    prefix: &'a str,
    device: &'a Device,
}

impl Loader<'_> {
    fn conv(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<ConvBn> {
        ConvBn::load(
            self.w,
            &format!("{}.{name}", self.prefix),
            c_in,
            c_out,
            k,
            stride,
            pad,
            self.device,
        )
    }
}

/// 35×35 block (Mixed_5b/5c/5d): 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avgpool→1x1.
pub struct InceptionA {
    b1: ConvBn,
    b5_1: ConvBn,
    b5_2: ConvBn,
    b3_1: ConvBn,
    b3_2: ConvBn,
    b3_3: ConvBn,
    pool: ConvBn,
}

impl InceptionA {
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        c_in: usize,
        pool_features: usize,
        device: &Device,
    ) -> Result<Self> {
        let l = Loader { w, prefix, device };
        Ok(Self {
            b1: l.conv("branch1x1", c_in, 64, (1, 1), 1, (0, 0))?,
            b5_1: l.conv("branch5x5_1", c_in, 48, (1, 1), 1, (0, 0))?,
            b5_2: l.conv("branch5x5_2", 48, 64, (5, 5), 1, (2, 2))?,
            b3_1: l.conv("branch3x3dbl_1", c_in, 64, (1, 1), 1, (0, 0))?,
            b3_2: l.conv("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))?,
            b3_3: l.conv("branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1))?,
            pool: l.conv("branch_pool", c_in, pool_features, (1, 1), 1, (0, 0))?,
        })
    }

    pub fn forward(&self, x: &Tensor, e: &Exec) -> Result<Tensor> {
        let a = self.b1.forward(x, e)?;
        let b = self.b5_2.forward(&self.b5_1.forward(x, e)?, e)?;
        let c = self.b3_3.forward(&self.b3_2.forward(&self.b3_1.forward(x, e)?, e)?, e)?;
        let d = self.pool.forward(&avg_pool_3x3_s1_p1_exclude_pad(x, e)?, e)?;
        Ok(Tensor::cat(&[a, b, c, d], 1)?)
    }
}

/// Reduction 35→17 (Mixed_6a): 3x3/2 | 1x1→3x3→3x3/2 | maxpool/2.
pub struct InceptionB {
    b3: ConvBn,
    bd_1: ConvBn,
    bd_2: ConvBn,
    bd_3: ConvBn,
}

impl InceptionB {
    pub fn load(w: &WeightMap, prefix: &str, c_in: usize, device: &Device) -> Result<Self> {
        let l = Loader { w, prefix, device };
        Ok(Self {
            b3: l.conv("branch3x3", c_in, 384, (3, 3), 2, (0, 0))?,
            bd_1: l.conv("branch3x3dbl_1", c_in, 64, (1, 1), 1, (0, 0))?,
            bd_2: l.conv("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))?,
            bd_3: l.conv("branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0))?,
        })
    }

    pub fn forward(&self, x: &Tensor, e: &Exec) -> Result<Tensor> {
        let a = self.b3.forward(x, e)?;
        let b = self.bd_3.forward(&self.bd_2.forward(&self.bd_1.forward(x, e)?, e)?, e)?;
        let c = max_pool_3x3_s2(x, e)?;
        Ok(Tensor::cat(&[a, b, c], 1)?)
    }
}

/// 17×17 block (Mixed_6b..6e): 1x1 | 1x1→1x7→7x1 | 1x1→7x1→1x7→7x1→1x7 | avgpool→1x1.
pub struct InceptionC {
    b1: ConvBn,
    b7: [ConvBn; 3],
    bd: [ConvBn; 5],
    pool: ConvBn,
}

/// Output of [`InceptionC::forward_with_branch1x1`]: the block output and its 1x1 branch.
pub struct InceptionCOutput {
    pub output: Tensor,
    pub branch1x1: Tensor,
}

impl InceptionC {
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        c_in: usize,
        c7: usize,
        device: &Device,
    ) -> Result<Self> {
        let l = Loader { w, prefix, device };
        let (k17, k71, p17, p71) = ((1, 7), (7, 1), (0, 3), (3, 0));
        Ok(Self {
            b1: l.conv("branch1x1", c_in, 192, (1, 1), 1, (0, 0))?,
            b7: [
                l.conv("branch7x7_1", c_in, c7, (1, 1), 1, (0, 0))?,
                l.conv("branch7x7_2", c7, c7, k17, 1, p17)?,
                l.conv("branch7x7_3", c7, 192, k71, 1, p71)?,
            ],
            bd: [
                l.conv("branch7x7dbl_1", c_in, c7, (1, 1), 1, (0, 0))?,
                l.conv("branch7x7dbl_2", c7, c7, k71, 1, p71)?,
                l.conv("branch7x7dbl_3", c7, c7, k17, 1, p17)?,
                l.conv("branch7x7dbl_4", c7, c7, k71, 1, p71)?,
                l.conv("branch7x7dbl_5", c7, 192, k17, 1, p17)?,
            ],
            pool: l.conv("branch_pool", c_in, 192, (1, 1), 1, (0, 0))?,
        })
    }

    pub fn forward_with_branch1x1(&self, x: &Tensor, e: &Exec) -> Result<InceptionCOutput> {
        let a = self.b1.forward(x, e)?;
        let mut b = x.clone();
        for c in &self.b7 {
            b = c.forward(&b, e)?;
        }
        let mut d = x.clone();
        for c in &self.bd {
            d = c.forward(&d, e)?;
        }
        let p = self.pool.forward(&avg_pool_3x3_s1_p1_exclude_pad(x, e)?, e)?;
        let output = Tensor::cat(&[&a, &b, &d, &p], 1)?;
        Ok(InceptionCOutput { output, branch1x1: a })
    }

    pub fn forward(&self, x: &Tensor, e: &Exec) -> Result<Tensor> {
        Ok(self.forward_with_branch1x1(x, e)?.output)
    }
}

/// Reduction 17→8 (Mixed_7a): 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | maxpool/2.
pub struct InceptionD {
    b3: [ConvBn; 2],
    b7: [ConvBn; 4],
}

impl InceptionD {
    pub fn load(w: &WeightMap, prefix: &str, c_in: usize, device: &Device) -> Result<Self> {
        let l = Loader { w, prefix, device };
        Ok(Self {
            b3: [
                l.conv("branch3x3_1", c_in, 192, (1, 1), 1, (0, 0))?,
                l.conv("branch3x3_2", 192, 320, (3, 3), 2, (0, 0))?,
            ],
            b7: [
                l.conv("branch7x7x3_1", c_in, 192, (1, 1), 1, (0, 0))?,
                l.conv("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3))?,
                l.conv("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0))?,
                l.conv("branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }

    pub fn forward(&self, x: &Tensor, e: &Exec) -> Result<Tensor> {
        let a = self.b3[1].forward(&self.b3[0].forward(x, e)?, e)?;
        let mut b = x.clone();
        for c in &self.b7 {
            b = c.forward(&b, e)?;
        }
        let p = max_pool_3x3_s2(x, e)?;
        Ok(Tensor::cat(&[a, b, p], 1)?)
    }
}

/// Pool branch of an 8×8 block: average (FIDInceptionE_1, Mixed_7b) or max (FIDInceptionE_2,
/// Mixed_7c — the TensorFlow graph's quirk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EPool {
    AvgExcludePad,
    Max,
}

/// 8×8 block (Mixed_7b/7c): 1x1 | 1x1→(1x3 ‖ 3x1) | 1x1→3x3→(1x3 ‖ 3x1) | pool→1x1.
pub struct InceptionE {
    b1: ConvBn,
    b3_1: ConvBn,
    b3_2a: ConvBn,
    b3_2b: ConvBn,
    bd_1: ConvBn,
    bd_2: ConvBn,
    bd_3a: ConvBn,
    bd_3b: ConvBn,
    pool: ConvBn,
    pool_kind: EPool,
}

impl InceptionE {
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        c_in: usize,
        pool_kind: EPool,
        device: &Device,
    ) -> Result<Self> {
        let l = Loader { w, prefix, device };
        Ok(Self {
            b1: l.conv("branch1x1", c_in, 320, (1, 1), 1, (0, 0))?,
            b3_1: l.conv("branch3x3_1", c_in, 384, (1, 1), 1, (0, 0))?,
            b3_2a: l.conv("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1))?,
            b3_2b: l.conv("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0))?,
            bd_1: l.conv("branch3x3dbl_1", c_in, 448, (1, 1), 1, (0, 0))?,
            bd_2: l.conv("branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1))?,
            bd_3a: l.conv("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1))?,
            bd_3b: l.conv("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0))?,
            pool: l.conv("branch_pool", c_in, 192, (1, 1), 1, (0, 0))?,
            pool_kind,
        })
    }

    pub fn forward(&self, x: &Tensor, e: &Exec) -> Result<Tensor> {
        let a = self.b1.forward(x, e)?;
        let b = self.b3_1.forward(x, e)?;
        let b = Tensor::cat(&[self.b3_2a.forward(&b, e)?, self.b3_2b.forward(&b, e)?], 1)?;
        let c = self.bd_2.forward(&self.bd_1.forward(x, e)?, e)?;
        let c = Tensor::cat(&[self.bd_3a.forward(&c, e)?, self.bd_3b.forward(&c, e)?], 1)?;
        let pooled = match self.pool_kind {
            EPool::AvgExcludePad => avg_pool_3x3_s1_p1_exclude_pad(x, e)?,
            EPool::Max => max_pool_3x3_s1_p1(x, e)?,
        };
        let d = self.pool.forward(&pooled, e)?;
        Ok(Tensor::cat(&[a, b, c, d], 1)?)
    }
}
