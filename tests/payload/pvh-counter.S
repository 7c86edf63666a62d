# pvh-counter: the smallest guest that shows whether memory survived a
# snapshot. A PVH entry point (Xen ELF note PHYS32_ENTRY) puts the vCPU in
# 32-bit protected mode with paging off; the code then prints
# "MARK <n>\n" on COM1 forever, n = 0, 1, 2, ... kept in a register (and so
# in the saved vCPU state). After a restore the next line is the successor
# of the last one before the snapshot, never 0 again.
# Build: as --64 --defsym DELAY=<loops> pvh-counter.S -o p.o
#        ld -m elf_x86_64 -T pvh-counter.ld p.o -o pvh-counter.elf
        .code32
        .section .note.pvh, "a"
        .p2align 2
        .long 4                 # name size ("Xen\0")
        .long 4                 # descriptor size
        .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long _start

        .text
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        xor %edi, %edi          # the counter
1:      mov $prefix, %esi
        call puts
        mov %edi, %eax
        call putdec
        mov $'\n', %al
        call putc
        inc %edi
        mov $DELAY, %ecx
2:      loop 2b                 # a pause between lines
        jmp 1b

putc:   mov $0x3f8, %dx         # COM1 data register
        out %al, %dx
        ret

puts:   lodsb
        test %al, %al
        jz 3f
        call putc
        jmp puts
3:      ret

putdec: mov $10, %ebx           # print %eax in decimal
        xor %ecx, %ecx
4:      xor %edx, %edx
        div %ebx
        push %edx
        inc %ecx
        test %eax, %eax
        jnz 4b
5:      pop %eax
        add $'0', %al
        call putc
        loop 5b
        ret

prefix: .asciz "MARK "

        .bss
        .p2align 4
        .space 4096
stack_top:
