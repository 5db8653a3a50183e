#include "dreamlora/train/checkpointing.h"

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/train/train_log.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

CheckpointPlaces open_checkpoint_places(const TrainConfig& cfg, const fs::path& out,
                                        const Distributed& dist) {
  CheckpointPlaces places;
  places.store = std::make_unique<checkpoint::CheckpointStore>(out);
  if (dist.is_main())
    for (const auto& p : places.store->cleanup_temporaries())
      train_log("removed the leftover of an interrupted write: " + p.string());
  if (!cfg.checkpoint_mirror.empty() && dist.is_main()) {
    places.mirror = checkpoint::make_mirror(cfg.checkpoint_mirror, cfg.s3_endpoint);
    checkpoint::check_mirror_access(*places.mirror);
    places.store->add_mirror(places.mirror);
    train_log("mirroring checkpoints to " + places.mirror->describe());
  }
  return places;
}

std::optional<fs::path> find_resume_checkpoint(const TrainConfig& cfg, CheckpointPlaces& places,
                                               Distributed& dist, const fs::path& out) {
  const std::string& how = cfg.resume_from_checkpoint;
  if (how == "none" || how.empty()) return std::nullopt;
  if (how.rfind("s3://", 0) == 0) {
    // One remote checkpoint: s3://bucket/prefix/checkpoint-N
    auto slash = how.find_last_of('/');
    auto step = checkpoint::parse_checkpoint_dir_name(how.substr(slash + 1));
    DL_CHECK(step.has_value(), "--resume-from-checkpoint ", how,
             ": expected s3://bucket/prefix/checkpoint-<step>");
    if (dist.is_main()) {
      auto sink = checkpoint::make_mirror(how.substr(0, slash), cfg.s3_endpoint);
      auto* s3 = dynamic_cast<checkpoint::S3Sink*>(sink.get());
      auto got = checkpoint::download_checkpoint(s3->client(), s3->location(), *step, out);
      DL_CHECK(got.ok, "--resume-from-checkpoint ", how, ": ", got.reason);
    }
    dist.wait_for_main("the checkpoint download");
    return places.store->path_for(*step);
  }
  if (how == "latest") {
    if (places.mirror) {
      // A fresh machine: the mirror's newest checkpoint that verifies comes into the output dir.
      auto local = places.store->latest_valid();
      const int64_t local_step = local.latest ? local.latest->step : -1;
      places.mirror->restore_latest(*places.store, local_step,
                                    [](const std::string& line) { train_log(line); });
    }
    dist.wait_for_main("the checkpoint download");
    auto latest = places.store->latest_valid();
    for (const auto& s : latest.skipped) train_log(str("skipping ", s.path.string(), ": ", s.reason));
    if (!latest.latest) {
      train_log("no valid checkpoint in " + out.string() + ": starting fresh");
      return std::nullopt;
    }
    return latest.latest->path;
  }
  fs::path dir = how;
  auto v = checkpoint::verify_checkpoint(dir);
  DL_CHECK(v.ok, "--resume-from-checkpoint ", dir.string(), ": does not verify: ", v.reason);
  return dir;
}

TrainerState read_resumable_state(const fs::path& dir, const io::Json& fingerprint,
                                  bool allow_schedule_change) {
  auto state = TrainerState::from_json(io::read_json(dir / "trainer_state.json"), dir.string());
  auto check = compare_fingerprints(state.fingerprint, fingerprint, allow_schedule_change);
  for (const auto& note : check.notes) train_log(note);
  if (!check.differences.empty()) {
    std::string msg = str(dir.string(), ": settings that change the result differ from the checkpoint's:");
    for (const auto& d : check.differences) msg += "\n  " + d;
    msg += "\nUse the same settings, a new --output-dir, or --resume-from-checkpoint none to start over.";
    fail(msg);
  }
  return state;
}

void redraw_loss_curve_with(checkpoint::CheckpointContents& contents, std::vector<MetricsLog::Point> points,
                            const fs::path& svg) {
  contents.prepare = [prepare = std::move(contents.prepare), points = std::move(points),
                      svg](checkpoint::CheckpointContents& c) {
    prepare(c);
    try {
      io::write_file_atomically(svg, render_loss_svg(points));
    } catch (const std::exception& e) {
      train_log(str("warning: ", svg.string(), " not updated: ", e.what()));
    }
  };
}

checkpoint::WriterOptions checkpoint_writer_options(const TrainConfig& cfg) {
  checkpoint::WriterOptions o;
  o.total_limit = static_cast<int>(cfg.checkpoints_total_limit);
  o.on_error = checkpoint::parse_error_policy(cfg.on_checkpoint_error);
  o.synchronous = cfg.sync_checkpoints;
  return o;
}

checkpoint::CheckpointScheduleOptions checkpoint_schedule_options(const TrainConfig& cfg) {
  auto o = checkpoint::CheckpointScheduleOptions::parse(cfg.checkpointing_steps, cfg.checkpointing_minutes,
                                                        cfg.expected_uptime);
  o.num_steps = cfg.num_steps;
  return o;
}

}  // namespace dreamlora::train
