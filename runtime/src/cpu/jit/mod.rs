//! Cranelift code generation for fusion regions: elementwise DAGs, reductions and epilogues as native loops.
