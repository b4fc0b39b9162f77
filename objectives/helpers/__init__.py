"""Building blocks the objectives share, none of them an objective itself: projection
heads (``heads``), the one NT-Xent (``nt_xent``), spherical k-means and adjusted mutual
information (``clustering``), patch masks, targets and losses of masked patch modeling
(``patch_masking``), the views of view objectives in the data pipeline (``views``),
and rows gathered from every rank (``ranks``). Registered objectives live one level up."""
