"""The report's fixed prose, by section: explanations and table and figure captions (the numbers stay in code)."""

CAPTIONS: dict[str, str] = {
    "fig3.1": ("Figure 3: accuracy per target-distance bin (top) and facts per bin (bottom)."),
    "fig3.2": (
        "Figure 3 in the paper's bands (Table 5: short [0.1, 0.3), medium [0.3, 0.6), long [0.6, 1.0]; below 0.1 apart): accuracy (%) with facts in brackets, and the differences from medium in points, 95% CIs over trials. The paper's claim is that short and long are both below medium. Targets are split by kind (a digit or a month's name: number or date; else entity); token accuracy beside exact match."
    ),
    "fig3.3": (
        "Figure 3 in model-relative bins: the deciles of this model's own dist(y_old, y_t) over the distinct facts of the panel's trials (cut points q10 / q30–q70 / q90), the bottom and the top decile against the middle 40% (deciles 4–7): the paper's shape on this model's own scale of distances, not Table 5's absolute bands (which were set on LLaMA2). Same pooling and intervals."
    ),
    "fig3.4": (
        "Distances above 1 (cosine distances reach 2): clipped to 1 for the bins, the bands and the loss weights; raw values kept in the records. dist_old counts distinct facts, dist_new every trained answer."
    ),
    "fig4_table1.1": (
        "A fact deviates when dist(y_new, y_t) > dist(y_old, y_t). RD = (dist_new − dist_old) / dist_old is undefined where dist_old = 0 and such facts are left out of the RD mean. A bad case has accuracy < 1 or dist(y_new, y_t) > 0. A bad case whose y_new is empty has no distance: it stays among the bad cases but cannot count as a deviation, so the column 'Empty y_new' says how many bad cases could not be measured (the deviation share is a lower bound by that many)."
    ),
    "fig4_table1.2": ("Figure 4: deviation share and mean RD per target-distance bin."),
    "fig4_table1.3": (
        "Table 1. Proportion of the deviation phenomenon in bad cases (%) [95% bootstrap CI over trials]."
    ),
    "fig4_table1.4": ("Figure 4 data: deviation share (%) and mean RD per distance bin."),
    "fig6.1": ("Figure 6: trial accuracy vs mean (a) and variance (b) of target distances."),
    "fig6.2": (
        "Figure 6 data: Pearson correlation of trial accuracy with the set's mean and variance of target distance [95% bootstrap CI over trials]."
    ),
    "table2": (
        "Plain trials only (γ = 0, no data filter), one table per model and method. Trials are split by their mean target distance into three equal-width segments of the observed range (short / medium / long); each cell is the mean over the trials of that segment."
    ),
    "fig5": ("Figure 5: features on PC1/PC2 by band, and variance per component."),
    "fig8": ("Figure 8: accuracy per distance bin for each number of facts per trial."),
    "table5": (
        "Table 5. Responses before (y_old) and after (y_new) tuning; bands short 0.1–0.3, medium 0.3–0.6, long 0.6–1.0."
    ),
    "fig7.1": (
        "Accuracy on the original (test) facts after replacing a share ρ of the training facts, either by the greedy semantic filter of Eq. 4 or at random. The paired delta compares the two at the same sampling and seed. Random replacement reads neither λ, σ nor the mean bounds: where it ran at one value of a swept filter setting, its trials pair with the filter's at every value (one random arm for the whole sweep)."
    ),
    "fig7.2": ("Figure 7: accuracy vs replaced share ρ; dashed lines: no replacement."),
    "fig7.3": (
        "Figure 7 data: accuracy (%) per ρ and the paired difference filter − random (percentage points) [95% bootstrap CI]."
    ),
    "fig7.4": (
        "Whole-K accuracy is capped at the retained share: a replaced fact is never trained. The split below separates the cap from interference: accuracy on the retained test facts (trained), on the replaced ones (not trained) and on every trained fact (retained and added), with the mean number of retained and replaced test facts per trial. The filter keeps test facts without a target distance (empty y_old) outside the filter, so a few are retained even at ρ = 1."
    ),
    "fig7.5": (
        "Figure 7, split by what was trained: accuracy (%) per selection and ρ [95% bootstrap CI]; set mean / var: the trained set's mean and variance of target distance (defined distances, mean over trials; — where the trials did not log them); Δ retained: paired filter − random on retained accuracy (pp)."
    ),
    "tables3_4.1": (
        "Locality is Eq. 8 (the tuned greedy answer equals the base one); soft locality is the mean of 1 − dist(base answer, tuned answer) over the unrelated prompts, so a change of answer style costs less than a change of meaning."
    ),
    "tables3_4.2": (
        "Tables 3–4. Accuracy, generality and locality (%) per γ: γ = 0 is the original training (Table 4), γ > 0 the re-weighted loss of Eq. 5 (Table 3). Mean over trials [95% bootstrap CI over trials]."
    ),
    "sweep": ("Optuna parameter importances (fANOVA) of the search trials."),
    "overview": ("Headline metrics per configuration (%): mean over trials [95% bootstrap CI over trials]."),
    "compare": ("The two experiments share no configuration, so nothing is compared directly."),
}
