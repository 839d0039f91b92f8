// Tollgate dashboard: a little of our own script on top of pages that work
// without it. Copy buttons, confirmations before destructive forms, and a
// gate on leaving a plaintext key unseen. No inline handlers: the CSP forbids them.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // <button data-copy="#id">: copies the text of the element it names.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.dataset.copy);
      const status = document.querySelector(button.dataset.status || "#copy-status");
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.dataset.copied = "true";
        if (status) status.textContent = "Copied to the clipboard.";
      } catch (e) {
        if (status) status.textContent = "Copying failed: select the key and copy it by hand.";
      }
    });
  }

  // <form data-confirm="question">: asks before sending.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  // <a data-leave-gate="#copy-button">: leaving before copying asks first.
  for (const link of document.querySelectorAll("a[data-leave-gate]")) {
    link.addEventListener("click", (event) => {
      const copy = document.querySelector(link.dataset.leaveGate);
      if (copy && copy.dataset.copied !== "true" &&
          !window.confirm("You have not copied the key. It will never be shown again. Leave anyway?")) {
        event.preventDefault();
      }
    });
  }

  // <dialog open data-modal>: the show-once secret is in the page as it comes
  // (readable without script) and becomes a modal dialog with it.
  for (const dialog of document.querySelectorAll("dialog[data-modal]")) {
    if (typeof dialog.showModal === "function") {
      dialog.close();
      dialog.showModal();
    }
    // data-secret names what is shown (a token, a signing secret); a key by default.
    const what = dialog.dataset.secret || "the key";
    const unseen = () => {
      const copy = dialog.querySelector("button[data-copy]");
      return copy && copy.dataset.copied !== "true" &&
        !window.confirm(`You have not copied ${what}. It will never be shown again. Close anyway?`);
    };
    dialog.addEventListener("cancel", (event) => { if (unseen()) event.preventDefault(); });
    for (const close of dialog.querySelectorAll("button[data-close-gate]")) {
      close.addEventListener("click", (event) => { if (unseen()) event.preventDefault(); });
    }
  }
});
