"""Published baseline rows of the paper's Tables II-IX, quoted from the paper.

Every number here is QUOTED FROM THE PAPER (``../shared/paper/pref-restore-paper.txt``), not
measured by this project; reports label these rows "quoted from the paper". Column order is the
paper's; columns are our metric ids (``prefrestore.metrics.SPECS``). The paper's header typos
("CLIQQA+", "Wilder-Test") are normalised to CLIPIQA+ and WIDER-Test.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperTable:
    number: str  # the paper's table number (roman)
    title: str
    columns: tuple[str, ...]  # metric ids, in the paper's column order
    rows: tuple[tuple[str, tuple[float, ...]], ...]  # (method, values in column order)


PAIRED_COLUMNS = ("lpips", "fid_hq", "fid_ffhq", "musiq", "clipiqa_plus", "maniqa", "lmd", "deg",
                  "topiq_face", "topiq_swin_face", "dsl_fiqa")
REAL_COLUMNS = ("fid_ffhq", "musiq", "clipiqa_plus", "maniqa", "topiq_face", "topiq_swin_face", "dsl_fiqa")

TABLE_II = PaperTable("II", "CelebA-Test (synthetic)", PAIRED_COLUMNS, (
    ("GFPGAN", (0.4315, 21.7414, 53.4286, 75.3721, 0.6529, 0.5737, 5.1382, 58.0687, 0.8018, 0.8559, 0.8838)),
    ("GPEN", (0.4359, 33.2368, 49.9732, 74.9878, 0.6031, 0.4375, 5.9907, 59.8849, 0.668, 0.7927, 0.7275)),
    ("DR2", (0.4599, 48.7970, 76.1381, 63.8542, 0.5233, 0.5021, 6.5405, 66.7169, 0.6507, 0.7348, 0.7108)),
    ("DiffFace", (0.4389, 18.7722, 47.3185, 66.7451, 0.5570, 0.4975, 5.4759, 63.4511, 0.6730, 0.7560, 0.7581)),
    ("RestoreFormer++", (0.4763, 45.0251, 43.0445, 72.3612, 0.6220, 0.5687, 8.8019, 70.5083, 0.7319, 0.7955,
                         0.8301)),
    ("DAEFR", (0.4317, 20.9941, 48.0317, 74.5893, 0.6738, 0.5761, 5.6332, 62.8184, 0.7851, 0.8380, 0.8580)),
    ("Codeformer", (0.4005, 27.4670, 65.4874, 75.9432, 0.6584, 0.5527, 5.3819, 62.1972, 0.7946, 0.8436, 0.8688)),
    ("VQFR", (0.4095, 20.5485, 54.2846, 73.2969, 0.6316, 0.5531, 5.7297, 62.2595, 0.7764, 0.8239, 0.8567)),
    ("Pref-Restore Fidelity", (0.4175, 16.2435, 40.7014, 74.1902, 0.6526, 0.4895, 5.1337, 54.0623, 0.7471, 0.8298,
                               0.8246)),
    ("Pref-Restore Quality", (0.5099, 18.1590, 40.2627, 76.3296, 0.6997, 0.5810, 8.3588, 73.9882, 0.8227, 0.9002,
                              0.9002)),
))

TABLE_III = PaperTable("III", "LFW-Test (mild, real)", REAL_COLUMNS, (
    ("GFPGAN", (48.6610, 76.5157, 0.6630, 0.5843, 0.8217, 0.8765, 0.8811)),
    ("GPEN", (55.0946, 72.3826, 0.5946, 0.4606, 0.7308, 0.8191, 0.7863)),
    ("DR2", (53.5473, 72.4804, 0.5970, 0.5308, 0.7481, 0.8156, 0.8231)),
    ("DiffFace", (47.0041, 69.8269, 0.5642, 0.4600, 0.6727, 0.7613, 0.7554)),
    ("RestoreFormer", (49.3172, 73.6487, 0.6160, 0.5657, 0.7464, 0.8043, 0.8325)),
    ("DAEFR", (48.5389, 75.8789, 0.6559, 0.5425, 0.7744, 0.8369, 0.8365)),
    ("Codeformer", (52.4015, 75.4539, 0.6480, 0.5231, 0.7787, 0.8404, 0.8431)),
    ("VQFR", (50.9369, 74.5095, 0.6077, 0.5353, 0.7617, 0.8257, 0.8352)),
    ("Pref-Restore", (54.7887, 76.6660, 0.6951, 0.5883, 0.8471, 0.9121, 0.8913)),
))

TABLE_IV = PaperTable("IV", "WebPhoto-Test (real)", REAL_COLUMNS, (
    ("GFPGAN", (91.7843, 74.7166, 0.6157, 0.5366, 0.7622, 0.8146, 0.8152)),
    ("GPEN", (86.5962, 65.6675, 0.4886, 0.4290, 0.6466, 0.7339, 0.7094)),
    ("DR2", (123.5743, 64.1698, 0.5038, 0.4510, 0.6160, 0.6946, 0.6669)),
    ("DiffFace", (82.6670, 65.5357, 0.4940, 0.4236, 0.5924, 0.6900, 0.6647)),
    ("RestoreFormer", (79.6334, 69.8371, 0.5430, 0.5183, 0.6653, 0.7337, 0.7267)),
    ("DAEFR", (77.4463, 72.7081, 0.5944, 0.5140, 0.7029, 0.7695, 0.7705)),
    ("Codeformer", (92.6693, 71.9399, 0.5930, 0.4831, 0.7079, 0.7665, 0.8279)),
    ("VQFR", (88.3393, 70.9087, 0.5675, 0.4909, 0.6994, 0.7534, 0.7601)),
    ("Pref-Restore", (85.5779, 76.0059, 0.7035, 0.5384, 0.7837, 0.8506, 0.8486)),
))

TABLE_V = PaperTable("V", "WIDER-Test (heavy, real)", REAL_COLUMNS, (
    ("GFPGAN", (42.9806, 74.8329, 0.6431, 0.5551, 0.7949, 0.8546, 0.8556)),
    ("GPEN", (55.4026, 75.5878, 0.6037, 0.4459, 0.7166, 0.8224, 0.7600)),
    ("DR2", (54.8225, 65.3340, 0.5254, 0.4751, 0.6792, 0.7560, 0.7401)),
    ("DiffFace", (38.4898, 65.0191, 0.5377, 0.4326, 0.6406, 0.7367, 0.7131)),
    ("RestoreFormer", (51.3830, 67.8415, 0.5644, 0.4984, 0.6707, 0.7544, 0.7532)),
    ("DAEFR", (37.6716, 74.1470, 0.6437, 0.5204, 0.7476, 0.8151, 0.8134)),
    ("Codeformer", (37.6606, 71.8923, 0.6160, 0.4816, 0.7316, 0.7993, 0.7977)),
    ("VQFR", (38.8920, 71.4168, 0.5901, 0.5043, 0.7317, 0.7977, 0.8024)),
    ("Pref-Restore", (35.1473, 76.2551, 0.6913, 0.5828, 0.8431, 0.9020, 0.8892)),
))

TABLE_VI = PaperTable("VI", "CelebChild-Test (real)", REAL_COLUMNS, (
    ("GFPGAN", (120.9049, 74.1155, 0.6166, 0.5345, 0.7484, 0.7917, 0.8419)),
    ("GPEN", (109.1407, 70.3653, 0.5491, 0.4307, 0.6393, 0.7341, 0.7429)),
    ("DR2", (137.0317, 69.6723, 0.6025, 0.4982, 0.6918, 0.7776, 0.8063)),
    ("DiffFace", (106.2445, 66.6574, 0.5285, 0.4206, 0.5935, 0.7021, 0.7079)),
    ("RestoreFormer", (102.8651, 70.5183, 0.5708, 0.5425, 0.6840, 0.7474, 0.7921)),
    ("DAEFR", (108.2202, 73.7093, 0.6240, 0.5141, 0.7189, 0.7961, 0.8154)),
    ("Codeformer", (124.3481, 73.6569, 0.6171, 0.4985, 0.7342, 0.8020, 0.8279)),
    ("VQFR", (117.9200, 72.3455, 0.5962, 0.5073, 0.7090, 0.7819, 0.8154)),
    ("Pref-Restore", (105.9776, 76.0753, 0.7016, 0.5727, 0.8121, 0.8744, 0.8859)),
))

TABLE_VII = PaperTable("VII", "Text guidance, semantic metrics", ("clipscore_i", "clipscore_t", "dreamsim"), (
    ("Base model", (0.7435, 0.2610, 0.7405)),
    ("+Caption", (0.8193, 0.2631, 0.8026)),
))

# Table VIII as printed. The paper's text quotes Pick Score 76.98 -> 86.66, which disagrees with
# the table (20.01 -> 22.53); we quote the table.
TABLE_VIII = PaperTable("VIII", "Preference metrics before/after DiffusionNFT", ("hpsv2", "clip_score", "pickscore"), (
    ("PrefRestore-Base (Stage 1)", (22.28, 19.67, 20.01)),
    ("PrefRestore-RL (Stage 2)", (30.22, 21.10, 22.53)),
))

TABLE_IX = PaperTable("IX", "Ablation of stage 1.2 (validation set)", ("lpips", "fid_hq", "lmd", "deg"), (
    ("Stage 1.1 only", (0.5272, 23.2199, 8.6819, 74.5286)),
    ("Stage 1.1 + 1.2", (0.4175, 16.2435, 5.1337, 54.0623)),
))

BY_BENCHMARK: dict[str, PaperTable] = {
    "celeba_test": TABLE_II,
    "lfw_test": TABLE_III,
    "webphoto_test": TABLE_IV,
    "wider_test": TABLE_V,
    "celebchild_test": TABLE_VI,
}
ALL_TABLES = (TABLE_II, TABLE_III, TABLE_IV, TABLE_V, TABLE_VI, TABLE_VII, TABLE_VIII, TABLE_IX)
