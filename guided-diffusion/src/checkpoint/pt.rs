//! Reading `torch.save` zip archives without executing them: candle's pickle reader interprets
//! only the opcodes that rebuild tensors (no `find_class` of arbitrary code).
use std::collections::HashMap;
use std::path::Path;

use super::StateDict;
use crate::{Error, Result};

pub(super) fn read(path: &Path) -> Result<StateDict> {
    let tensors = candle_core::pickle::read_all(path).map_err(|e| {
        Error::msg(format!("{}: cannot read the PyTorch checkpoint: {e}", path.display()))
    })?;
    if tensors.is_empty() {
        return Err(Error::msg(format!(
            "{}: the archive holds no tensors (expected a model state_dict)",
            path.display()
        )));
    }
    let mut map = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        // Checkpoints saved from a DataParallel/DDP wrapper prefix every key with `module.`.
        let name = name.strip_prefix("module.").map(str::to_string).unwrap_or(name);
        map.insert(name, t);
    }
    Ok(StateDict { tensors: map, metadata: HashMap::new() })
}
