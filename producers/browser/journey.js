/*
 * journey.js: the browser tracker. Speaks Segment's HTTP API to the collector.
 *
 *   <script src="https://collector.example/journey.js"></script>
 *   <script>
 *     journey.init({host: "https://collector.example", writeKey: "..."});  // sends page_view
 *     journey.track("product_viewed", {sku: "sku-1", price: 19.9});
 *     journey.identify("customer-42", {plan: "gold"});                  // after login
 *   </script>
 *
 * The anonymous id lives in localStorage (a first-party cookie when storage is
 * blocked), so one device keeps one id across pages and visits; identify() links it
 * to the customer. Events are batched and sent with fetch(keepalive) as text/plain
 * (no CORS preflight), and with sendBeacon when the page is hidden or unloaded, so
 * the last events of a page are not lost.
 */
(function (window, document) {
  "use strict";
  var ANON_KEY = "journey_aid", USER_KEY = "journey_uid", MAX_BATCH = 20;
  var config = {host: "", writeKey: "", flushInterval: 1000, autoPageView: true};
  var queue = [], timer = null, anonymousId = null, userId = null;

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0;
      return (c === "x" ? r : (r & 0x3 | 0x8)).toString(16);
    });
  }

  function load(key) {
    try { var v = window.localStorage.getItem(key); if (v) return v; } catch (e) { /* blocked */ }
    var m = document.cookie.match(new RegExp("(?:^|; )" + key + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }

  function save(key, value) {
    try { window.localStorage.setItem(key, value); return; } catch (e) { /* blocked */ }
    document.cookie = key + "=" + encodeURIComponent(value) +
      "; path=/; max-age=63072000; SameSite=Lax";
  }

  function campaign() {
    var out = {}, params = new URLSearchParams(window.location.search);
    ["source", "medium", "campaign", "term", "content"].forEach(function (k) {
      var v = params.get("utm_" + k); if (v) out[k === "campaign" ? "name" : k] = v;
    });
    return out;
  }

  function context() {
    var ctx = {
      page: {url: window.location.href, path: window.location.pathname,
             referrer: document.referrer, title: document.title},
      userAgent: window.navigator.userAgent,
      locale: window.navigator.language,
      library: {name: "journey.js", version: "1"}
    };
    var c = campaign(); if (Object.keys(c).length) ctx.campaign = c;
    return ctx;
  }

  function enqueue(message) {
    message.messageId = uuid();
    message.timestamp = new Date().toISOString();
    message.anonymousId = anonymousId;
    if (userId) message.userId = userId;
    message.channel = "browser";
    message.context = context();
    queue.push(message);
    if (queue.length >= MAX_BATCH) flush();
    else if (!timer) timer = window.setTimeout(flush, config.flushInterval);
  }

  function flush(unloading) {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (!queue.length || !config.host) return Promise.resolve();
    var batch = queue.splice(0, queue.length);
    var body = JSON.stringify({batch: batch, sentAt: new Date().toISOString(),
                               writeKey: config.writeKey});
    var url = config.host.replace(/\/$/, "") + "/v1/batch";
    if (unloading && window.navigator.sendBeacon &&
        window.navigator.sendBeacon(url, new Blob([body], {type: "text/plain"}))) {
      return Promise.resolve();
    }
    return window.fetch(url, {method: "POST", body: body, keepalive: true,
                              headers: {"Content-Type": "text/plain"}})
      .then(function (r) {
        // 5xx and 429: keep the events for the next flush; 4xx: they were bad.
        if (r.status >= 500 || r.status === 429) queue = batch.concat(queue);
        return r;
      })
      .catch(function () { queue = batch.concat(queue); });
  }

  var journey = {
    init: function (options) {
      for (var k in options) if (Object.prototype.hasOwnProperty.call(options, k)) config[k] = options[k];
      anonymousId = load(ANON_KEY);
      if (!anonymousId) { anonymousId = uuid(); save(ANON_KEY, anonymousId); }
      userId = load(USER_KEY);
      if (config.autoPageView) journey.page();
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "hidden") flush(true);
      });
      window.addEventListener("pagehide", function () { flush(true); });
      return journey;
    },
    track: function (type, properties) {
      enqueue({type: "track", event: type, properties: properties || {}});
    },
    page: function (properties) {
      var props = properties || {};
      if (!props.url) props.url = window.location.href;
      if (!props.title && document.title) props.title = document.title;
      enqueue({type: "page", properties: props});
    },
    identify: function (customerId, traits) {
      userId = String(customerId);
      save(USER_KEY, userId);
      enqueue({type: "identify", userId: userId, traits: traits || {}});
    },
    flush: function () { return flush(false); },
    anonymousId: function () { return anonymousId; },
    reset: function () {
      userId = null; anonymousId = uuid(); save(ANON_KEY, anonymousId);
      try { window.localStorage.removeItem(USER_KEY); } catch (e) { /* blocked */ }
    }
  };
  window.journey = journey;
})(window, document);
