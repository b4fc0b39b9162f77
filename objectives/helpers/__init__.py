"""Building blocks the objectives share, none of them an objective itself: projection
heads (``heads``), the one NT-Xent (``nt_xent``), spherical k-means and adjusted mutual
information (``clustering``), patch masks, targets and losses of masked patch modeling
(``patch_masking``), and the two views of view objectives in the data pipeline
(``views``). Registered objectives live one level up."""
