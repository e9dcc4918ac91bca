//! Guidance terms passed to samplers as values (classifier guidance, none, ...).
