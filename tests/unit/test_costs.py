from largebatch.tune.costs import costs_line, study_costs


def test_study_costs_split_training_from_trial_time():
    records = [{"wall_s": 6.0, "fit_s": 8.0, "startup_s": 1.5}, {"wall_s": 2.0, "fit_s": 4.0, "startup_s": 2.0},
               {"wall_s": None, "fit_s": None, "startup_s": None}]  # a trial that failed before reporting
    c = study_costs(records, study_s=10.0, slots=2)
    assert c["training_s"] == 8.0 and c["trial_s"] == 12.0 and c["startup_s"] == 3.5
    assert abs(c["training_share"] - 8 / 12) < 1e-12
    assert c["study_over_ideal"] == 10.0 / 4.0  # 8 s of training over 2 slots would take 4 s
    line = costs_line(c, 10.0)
    assert "training 8 s (67%)" in line and "= 2.50" in line


def test_study_costs_without_trials_do_not_divide_by_zero():
    c = study_costs([], study_s=3.0, slots=2)
    assert c["training_share"] == 0.0 and c["study_over_ideal"] == 0.0


def test_the_throughput_profile_is_reported_apart_from_the_search():
    records = [{"wall_s": 4.0, "fit_s": 5.0, "startup_s": 1.0}, {"wall_s": 4.0, "fit_s": 5.0, "startup_s": 1.0}]
    c = study_costs(records, study_s=10.0, slots=2, profile_s=2.0)
    assert c["study_over_ideal"] == 8.0 / 4.0 and c["profile_s"] == 2.0 and c["slots"] == 2
    assert "(throughput profile 2 s)" in costs_line(c, 10.0)


def test_a_trial_stopped_early_counts_its_start_up_and_training():
    # stopped by asha/sha: no fit_s; before, its start-up counted and its trial time did not (start-up > trial time)
    records = [{"wall_s": 6.0, "fit_s": 8.0, "startup_s": 1.5}, {"wall_s": 0.5, "fit_s": None, "startup_s": 3.5}]
    c = study_costs(records, study_s=10.0, slots=2)
    assert c["trial_s"] == 8.0 + 4.0 and c["startup_s"] == 5.0 and c["startup_s"] <= c["trial_s"]
    assert abs(c["training_share"] - 6.5 / 12.0) < 1e-12


def test_costs_line_shows_the_commands_time_with_rays_start_up():
    from largebatch.tune.costs import costs_line

    c = {"trial_s": 50.0, "training_s": 40.0, "startup_s": 10.0, "training_share": 0.8, "study_over_ideal": 1.1,
         "profile_s": 0.0}
    line = costs_line(c, 40.0, 96.0)
    assert "study 40 s wall-clock, 96 s since the command started (Ray start-up and checks 56 s)" in line
    assert "since the command" not in costs_line(c, 40.0)
