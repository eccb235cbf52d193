// libuv handles on the heap for an owner that may be destroyed before libuv has closed them.
//
// libuv frees nothing: a handle's memory must stay valid until its close callback has run, one
// loop iteration or more after uv_close(). An object that owns handles can therefore not hold
// them as members if it may be destroyed at any time. UvHandles<Owner, Extra> keeps each handle
// in a heap Box that its close callback frees, and tells the boxes when the owner goes away:
// their callbacks then see owner() == nullptr and must do nothing but return.
//
// Use: one UvHandles member per owner. make() a box, init its handle (uv_timer_init(loop,
// &b->u.timer), uv_poll_init_socket, uv_fs_event_init...; data already points to the box),
// start it with a static callback that begins with
//     auto* b = Set::Box::from(handle);
//     if (!b->live()) return;
// and close(b) it when done. Everything runs on the loop's thread. Header-only; needs libuv.
#pragma once

#include <uv.h>

#include <cstddef>
#include <functional>
#include <unordered_set>
#include <utility>
#include <vector>

namespace spoad::util {

struct NoExtra {};

template <class Owner, class Extra = NoExtra>
class UvHandles {
 public:
  class Box {
   public:
    // The box of a handle made by make() (any uv_*_t of the union, or its uv_handle_t).
    static Box* from(const void* uv_handle) {
      return static_cast<Box*>(static_cast<const uv_handle_t*>(uv_handle)->data);
    }
    // The owner, or nullptr once the owner's UvHandles was destroyed.
    Owner* owner() const { return set_ ? set_->owner_ : nullptr; }
    bool closing() const { return closing_; }
    // The owner is there and the handle is not closing: a callback may act.
    bool live() const { return set_ && !closing_; }

    union {
      uv_handle_t handle;
      uv_timer_t timer;
      uv_poll_t poll;
      uv_fs_event_t fs;
    } u;
    Extra extra{};  // the owner's data for this handle

   private:
    friend class UvHandles;
    Box() { u.handle.data = this; }
    UvHandles* set_ = nullptr;
    bool closing_ = false;
    std::function<void()> after_close_;
  };

  // `on_closed`, optional, is called on the owner in the close callback of each box while the
  // owner exists, after the box left the set and before it is freed (compare the pointer, e.g.
  // to clear a member; empty() already counts it out). It may destroy the owner.
  using OnClosed = void (Owner::*)(Box*);
  explicit UvHandles(Owner* owner, OnClosed on_closed = nullptr)
      : owner_(owner), on_closed_(on_closed) {}
  // Closes the boxes still open; every box, closing or not, forgets the owner. Their memory
  // is freed later by libuv's close callbacks (the loop must run them).
  ~UvHandles() {
    for (Box* b : boxes_) {
      b->set_ = nullptr;
      if (!b->closing_) {
        b->closing_ = true;
        uv_close(&b->u.handle, &UvHandles::on_close);
      }
    }
  }
  UvHandles(const UvHandles&) = delete;
  UvHandles& operator=(const UvHandles&) = delete;

  // A new box, counted in the set. Its handle is not initialised yet: init it at once, or
  // discard() it if the init fails.
  Box* make() {
    auto* b = new Box;
    b->set_ = this;
    boxes_.insert(b);
    return b;
  }
  // Frees a box whose handle was never initialised (its uv_*_init failed).
  void discard(Box* b) {
    boxes_.erase(b);
    delete b;
  }
  // uv_close()s the handle unless it is already closing. `after_close`, optional, runs once
  // the box is freed (after those given before, if the box was already closing), also when
  // the owner is gone by then: it must not use the owner.
  void close(Box* b, std::function<void()> after_close = {}) {
    if (after_close && b->after_close_) {
      after_close = [first = std::move(b->after_close_), then = std::move(after_close)] {
        first();
        then();
      };
    }
    if (after_close) b->after_close_ = std::move(after_close);
    if (b->closing_) return;
    b->closing_ = true;
    uv_close(&b->u.handle, &UvHandles::on_close);
  }
  // close() on every box still open.
  void close_all() {
    const std::vector<Box*> bs(boxes_.begin(), boxes_.end());
    for (Box* b : bs)
      close(b);
  }

  // Boxes not yet freed, closing ones included.
  size_t size() const { return boxes_.size(); }
  bool empty() const { return boxes_.empty(); }
  const std::unordered_set<Box*>& boxes() const { return boxes_; }

 private:
  static void on_close(uv_handle_t* h) {
    Box* b = Box::from(h);
    UvHandles* set = b->set_;
    std::function<void()> after = std::move(b->after_close_);
    if (set) {
      set->boxes_.erase(b);
      if (set->on_closed_) (set->owner_->*set->on_closed_)(b);  // may destroy the owner
    }
    delete b;
    if (after) after();
  }

  Owner* owner_;
  OnClosed on_closed_;
  std::unordered_set<Box*> boxes_;
};

}  // namespace spoad::util
