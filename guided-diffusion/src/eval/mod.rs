//! Evaluation metrics: FID, sFID, Inception Score, precision and recall.
