//! control (to be written)
