import json


from dynamic_rcnn.tools.plot import main, plot_dynamics, read_metrics, read_update_period, update_steps


def write_metrics(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_read_metrics_keeps_last_value_of_resumed_iterations(tmp_path):
    path = str(tmp_path / "metrics.json")
    write_metrics(path, [
        {"iteration": 19, "dynamic_rcnn/iou_threshold": 0.4, "loss_cls": 1.0},
        {"iteration": 39, "dynamic_rcnn/iou_threshold": 0.45, "loss_cls": 0.8},
        "not json {",
        {"iteration": 39, "dynamic_rcnn/iou_threshold": 0.46, "loss_cls": 0.7},  # resumed run
        {"iteration": 40, "bbox/AP": 12.5},
    ])
    series = read_metrics(path)
    assert series["dynamic_rcnn/iou_threshold"] == [(19, 0.4), (39, 0.46)]
    assert series["loss_cls"] == [(19, 1.0), (39, 0.7)]
    assert series["bbox/AP"] == [(40, 12.5)]


def test_plot_writes_pngs_and_skips_baseline_runs(tmp_path, capsys):
    rows = [{"iteration": i, "dynamic_rcnn/iou_threshold": 0.4 + i / 1000, "dynamic_rcnn/iou_stat": 0.5,
             "dynamic_rcnn/beta": 1.0 - i / 1000, "dynamic_rcnn/error_stat": 0.3, "loss_box_reg": 1.0 / (i + 1),
             "total_loss": 2.0 / (i + 1)} for i in range(0, 100, 20)]
    write_metrics(str(tmp_path / "metrics.json"), rows)
    assert main([str(tmp_path)]) == 0
    for name in ("dynamics.png", "losses.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    baseline = read_metrics(str(tmp_path / "metrics.json"))
    baseline = {k: v for k, v in baseline.items() if not k.startswith("dynamic_rcnn/")}
    assert plot_dynamics(baseline, str(tmp_path / "none.png")) is False
    assert not (tmp_path / "none.png").exists()


def test_plot_names_a_missing_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "metrics.json does not exist" in capsys.readouterr().err


def test_each_update_is_drawn_at_the_iteration_it_happened():
    # Logged every 20 iterations, updates every 50 (before iterations 50 and 100).
    logged = [(19, 0.4), (39, 0.4), (59, 0.45), (79, 0.45), (99, 0.45), (119, 0.5)]
    assert update_steps(logged, 50) == [(19, 0.4), (50, 0.45), (100, 0.5), (119, 0.5)]
    # Without the period: at the first logged row that shows it.
    assert update_steps(logged) == [(19, 0.4), (59, 0.45), (119, 0.5)]


def test_update_period_comes_from_the_runs_config(tmp_path):
    assert read_update_period(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("MODEL:\n  DYNAMIC_RCNN:\n    UPDATE_PERIOD: 50\n")
    assert read_update_period(str(tmp_path)) == 50


def test_plot_says_how_many_unreadable_lines_it_skipped(tmp_path, capsys):
    rows = [{"iteration": i, "total_loss": 1.0 / (i + 1)} for i in (19, 39)]
    write_metrics(str(tmp_path / "metrics.json"), rows)
    with open(tmp_path / "metrics.json", "a") as f:
        f.write('{"iteration": 59, "total_lo')  # a run cut off while writing its last row
    assert main([str(tmp_path)]) == 0
    metrics = tmp_path / "metrics.json"
    assert f"note: skipped 1 unreadable line of {metrics} (a run cut off while writing?)\n" in capsys.readouterr().out
    assert read_metrics(str(metrics)) == {"total_loss": [(19, 0.05), (39, 0.025)]}  # what its other callers get


def test_plot_draws_every_stage_of_a_cascade(tmp_path, monkeypatch):
    import matplotlib.axes

    rows = [{"iteration": i, **{f"stage{k}/dynamic_rcnn/{name}": 0.5 + k / 10 + i / 1000
                                for k in range(3) for name in ("iou_threshold", "iou_stat", "beta", "error_stat")}}
            for i in range(0, 100, 20)]
    write_metrics(str(tmp_path / "metrics.json"), rows)
    labels = []
    original = matplotlib.axes.Axes.step

    def step(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "step", step)
    assert plot_dynamics(read_metrics(str(tmp_path / "metrics.json")), str(tmp_path / "dynamics.png")) is True
    assert labels == [f"stage{k} {what}" for what in ("IoU threshold", "SmoothL1 beta") for k in range(3)]


def test_a_metrics_line_that_is_json_but_not_an_object_is_one_line_naming_it(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    for bad in ("[1, 2]", "3"):
        write_metrics(str(metrics), [{"iteration": 19, "total_loss": 1.0}, bad])
        assert main([str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: {metrics} line 2 is JSON but not an object ({bad}): detectron2's metrics.json has one "
                       "object a line; is it a training run's?\n")


def test_a_config_yaml_that_cannot_be_read_is_a_note_and_the_plot_goes_on(tmp_path, capsys):
    rows = [{"iteration": i, "dynamic_rcnn/iou_threshold": 0.4, "total_loss": 1.0} for i in (19, 39)]
    write_metrics(str(tmp_path / "metrics.json"), rows)
    config = tmp_path / "config.yaml"
    for text, what in (("MODEL: [1, 2]\n", "MODEL is [1, 2], not a mapping"),
                       ("3\n", "the file holds 3, not a mapping"),
                       ("MODEL:\n  DYNAMIC_RCNN: on\n", "MODEL.DYNAMIC_RCNN is True, not a mapping"),
                       ("MODEL: {DYNAMIC_RCNN: {UPDATE_PERIOD: 0}}\n", "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD is 0, not an "
                                                                      "integer >= 1"),
                       ("MODEL: [1\n", "not YAML")):
        config.write_text(text)
        assert main([str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"note: {config}: {what}"), out
        assert out.splitlines()[0].endswith(": each update is drawn at the first logged iteration after it (or give "
                                            "--update-period)")
        assert (tmp_path / "dynamics.png").is_file()
    config.write_text("MODEL: {ROI_HEADS: {NAME: StandardROIHeads}}\n")  # a baseline's: no period, no note
    assert read_update_period(str(tmp_path)) is None
