#include "metrics/totals.h"

namespace spoad::metrics {

void Totals::add_final(const Arena& arena) {
  arena.visit([this](const SeriesView& s) {
    if (s.type == Type::kGauge) return;
    Key key{std::string(s.family), s.role, s.bound_us, std::string(s.labels)};
    auto [it, fresh] = series_.try_emplace(key);
    if (fresh) {
      it->second.help = std::string(s.help);
      it->second.type = s.type;
      it->second.unit = s.unit;
      order_.push_back(std::move(key));
    }
    it->second.value += s.value;
  });
}

void Totals::append(std::vector<Sample>& out) const {
  out.reserve(out.size() + order_.size());
  for (const Key& key : order_) {
    const Entry& e = series_.at(key);
    Sample s;
    s.family = std::get<0>(key);
    s.help = e.help;
    s.type = e.type;
    s.role = std::get<1>(key);
    s.unit = e.unit;
    s.bound_us = std::get<2>(key);
    s.labels = std::get<3>(key);
    s.value = static_cast<double>(e.value);
    out.push_back(std::move(s));
  }
}

}  // namespace spoad::metrics
