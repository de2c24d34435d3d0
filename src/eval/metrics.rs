//! Threshold-free OOD metrics: AUROC, AUPR and FPR at 95% TPR.
